//! Findings of the admin plane's outside audit, each as the attacker's test, through the
//! real router (`oneshot`, with the client address set as the listener sets it):
//!
//! - [`lockout`]: lockout per (account, source), never of the whole account; an account
//!   under attack from many sources is slowed, not locked;
//! - [`enumeration`]: a right password without a valid second factor answers exactly as
//!   a wrong one (and as an unknown account);
//! - [`metrics_tenants`]: `/metrics` names tenants only to callers allowed to read them;
//! - [`audit_head`]: the signed audit head and verification against it;
//! - [`key_revoke`]: a key revokes only itself and the keys it made.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use super::{Env, ADMIN_PASSWORD};

mod audit_head;
mod enumeration;
mod key_revoke;
mod lockout;
mod metrics_tenants;

/// What a caller sees of an answer, and how long it took.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
    /// `www-authenticate`, `retry-after`, `content-type`.
    headers: [Option<String>; 3],
    took: Duration,
}

impl Answer {
    /// Everything but the time.
    fn seen(&self) -> (StatusCode, &Value, &[Option<String>; 3]) {
        (self.status, &self.body, &self.headers)
    }
}

/// One request from `ip`.
async fn request(
    e: &Env,
    ip: IpAddr,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let req = crate::build_request(ip, method, path, token, body);
    let started = Instant::now();
    let res = e.app.clone().oneshot(req).await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let headers = [
        header("www-authenticate"),
        header("retry-after"),
        header("content-type"),
    ];
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let took = started.elapsed();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        body,
        headers,
        took,
    }
}

/// A login from `ip` with a password and, optionally, `extra` fields (`totp`,
/// `recovery_code`).
async fn login_from(e: &Env, ip: &str, user: &str, password: &str, extra: Value) -> Answer {
    let mut body = json!({"username": user, "password": password});
    if let (Some(b), Some(x)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(x.clone());
    }
    request(
        e,
        ip.parse().unwrap(),
        Method::POST,
        "/api/v1/auth/login",
        None,
        Some(body),
    )
    .await
}
