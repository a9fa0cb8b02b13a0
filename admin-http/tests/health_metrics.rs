//! `/healthz`, `/readyz` and `/metrics` over a real broker (RocksDB in a temp dir), driven
//! through the router with `oneshot` and once over a real socket; MQTT clients are raw
//! CONNECTs from our codec on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use messs_broker::{Broker, BrokerHandle, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::ServiceExt;

mod common;
use common::mqtt_client;

struct Running {
    mqtt: SocketAddr,
    handle: BrokerHandle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _data: tempfile::TempDir,
}

/// The try-out broker on an ephemeral port; `run` false: bound but not serving yet.
async fn broker(run: bool) -> (Running, Option<Broker>) {
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::try_out();
    config.listeners[0].bind = "127.0.0.1:0".parse().unwrap();
    config.storage.data_dir = data.path().to_path_buf();
    let broker = Broker::bind(config).await.unwrap();
    let mqtt = broker.local_addrs()[0];
    let handle = broker.handle();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let (task, idle) = if run {
        let task = tokio::spawn(async move {
            broker
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        (task, None)
    } else {
        drop(rx);
        (tokio::spawn(async {}), Some(broker))
    };
    let running = Running {
        mqtt,
        handle,
        stop: Some(tx),
        task,
        _data: data,
    };
    (running, idle)
}

impl Running {
    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(15), &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

async fn get(handle: &BrokerHandle, path: &str) -> (StatusCode, String, Option<String>) {
    let response = messs_admin::app(handle.clone())
        .unwrap()
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8(body.to_vec()).unwrap(),
        content_type,
    )
}

/// The value of the sample `line_start` (a name with its labels) in exposition `text`.
fn value(text: &str, line_start: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' '))
        .map(|v| v.parse::<f64>().unwrap() as u64)
}

async fn until_status(handle: &BrokerHandle, path: &str, want: StatusCode) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body, _) = get(handle, path).await;
        if status == want {
            return body;
        }
        assert!(Instant::now() < deadline, "{path}: still {status}: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn ready_only_with_listeners_up_and_storage_writing() {
    let (running, idle) = broker(false).await;
    let (status, body, _) = get(&running.handle, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["listeners_up"], 0);
    assert_eq!(r["listeners_configured"], 1);
    // Liveness does not depend on it.
    let (status, body, _) = get(&running.handle, "/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    drop(idle);

    let (running, _) = broker(true).await;
    let body = until_status(&running.handle, "/readyz", StatusCode::OK).await;
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["storage_failing"], false);
    // Writes failing (a full disk, say): not ready until one goes through again.
    let store = running.handle.store().unwrap();
    store.set_write_fault(true);
    let _c = mqtt_client(running.mqtt, "while-failing").await;
    until_status(&running.handle, "/readyz", StatusCode::SERVICE_UNAVAILABLE).await;
    store.set_write_fault(false);
    let _d = mqtt_client(running.mqtt, "after").await;
    until_status(&running.handle, "/readyz", StatusCode::OK).await;
    running.stop().await;
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_move_with_the_broker() {
    let (running, _) = broker(true).await;
    let (status, before, content_type) = get(&running.handle, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    assert_eq!(value(&before, "messs_connections"), Some(0));
    let _a = mqtt_client(running.mqtt, "a").await;
    let _b = mqtt_client(running.mqtt, "b").await;
    let (_, after, _) = get(&running.handle, "/metrics").await;
    assert_eq!(value(&after, "messs_connections"), Some(2));
    assert!(value(&after, "messs_connections_total").unwrap() >= 2);
    // Per-tenant samples name tenants: not for an anonymous scrape by default (with a
    // token: api.rs, findings/metrics_tenants.rs).
    assert_eq!(
        value(&after, "messs_tenant_connections{tenant=\"default\"}"),
        None
    );
    assert_eq!(
        value(
            &after,
            "messs_deliveries_dropped_total{reason=\"queue_full\"}"
        ),
        Some(0)
    );
    assert!(value(&after, "messs_storage_writes_total").is_some());
    // RocksDB's memory: the audit records and sessions written so far sit in memtables.
    assert!(value(&after, "messs_storage_memtable_bytes").is_some_and(|b| b > 0));
    assert!(value(&after, "messs_storage_block_cache_bytes").is_some_and(|b| b <= 32 * 1024 * 1024));
    assert_eq!(
        value(&after, "messs_transport_connections{transport=\"tcp\"}"),
        Some(2)
    );
    assert_eq!(
        value(&after, "messs_transport_connections{transport=\"tls\"}"),
        Some(0)
    );
    // Bytes: a PINGREQ in, a PINGRESP out (2 bytes each), on top of what was counted.
    let (rx0, tx0) = (
        value(&after, "messs_bytes_received_total").unwrap(),
        value(&after, "messs_bytes_sent_total").unwrap(),
    );
    let mut a = _a;
    a.write_all(&[0xC0, 0]).await.unwrap();
    let mut pong = [0u8; 2];
    a.read_exact(&mut pong).await.unwrap();
    assert_eq!(pong, [0xD0, 0]);
    let (_, later, _) = get(&running.handle, "/metrics").await;
    assert_eq!(value(&later, "messs_bytes_received_total"), Some(rx0 + 2));
    assert_eq!(value(&later, "messs_bytes_sent_total"), Some(tx0 + 2));
    // The store's writes are timed: the histogram counts each one.
    let writes = value(&later, "messs_storage_writes_total").unwrap();
    let timed = value(&later, "messs_storage_write_seconds_count").unwrap();
    assert!(
        timed >= writes && writes > 0,
        "{timed} timed, {writes} writes"
    );
    assert_eq!(
        value(&later, "messs_storage_write_seconds_bucket{le=\"+Inf\"}"),
        Some(timed)
    );
    // Every family has one HELP and one TYPE line, before its samples; every sample line
    // is `name[{labels}] value`.
    let mut declared = std::collections::HashSet::new();
    for line in after.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(matches!(kind, "counter" | "gauge" | "histogram"), "{line}");
            assert!(declared.insert(name.to_owned()), "TYPE twice: {line}");
        } else if !line.starts_with("# HELP ") {
            let (series, v) = line.rsplit_once(' ').unwrap();
            v.parse::<f64>().unwrap();
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).filter(|f| declared.contains(*f)))
                .unwrap_or(name);
            assert!(declared.contains(family), "sample before its TYPE: {line}");
            assert!(
                name.starts_with("messs_")
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{line}"
            );
        }
    }
    running.stop().await;
}

#[tokio::test]
async fn served_over_a_real_socket() {
    let (running, _) = broker(true).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(messs_admin::serve(
        listener,
        running.handle.clone(),
        Default::default(),
        async {
            let _ = rx.await;
        },
    ));
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(response.ends_with("\r\n\r\nok\n"), "{response}");
    let _ = tx.send(());
    server.await.unwrap().unwrap();
    running.stop().await;
}
