//! Connection load: open N connections at a target rate, hold them, and report the connect
//! rate, CONNACK latency and failures (and, with the broker's pid, its memory and CPU per
//! connection).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Semaphore};

use crate::bench::Latency;
use crate::proto::{connect, ConnectOptions, Reader, Writer};

/// Parameters of a connection run.
#[derive(Debug, Clone)]
pub struct ConnPlan {
    pub connections: u32,
    /// New connections per second; 0 = as fast as `concurrency` allows.
    pub rate: u32,
    /// Handshakes in flight at once.
    pub concurrency: u32,
    /// How long to hold the connections open once all are up.
    pub hold: Duration,
    /// Loopback addresses to connect from in turn (127.0.1.0 on); 0: the system's choice.
    pub sources: u32,
    /// Give up on the whole run after this long.
    pub duration: Duration,
    pub connect: ConnectOptions,
    pub client_prefix: String,
}

/// Results of a connection run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConnOutcome {
    pub attempted: u32,
    pub connected: u32,
    pub failed: u32,
    pub first_error: Option<String>,
    pub elapsed_s: f64,
    pub connects_per_s: f64,
    pub connack_latency_us: Latency,
}

type Held = Arc<Mutex<Vec<(Reader, Writer)>>>;

/// Opens the connections; calls `when_up` while they are all held open (for measuring the
/// broker), then closes them.
pub async fn run(
    plan: ConnPlan,
    when_up: impl AsyncFnOnce(u32),
    on_progress: impl Fn(u32) + Send + Sync + 'static,
) -> anyhow::Result<ConnOutcome> {
    let held: Held = Arc::new(Mutex::new(Vec::with_capacity(plan.connections as usize)));
    let latency = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let errors = Arc::new(Mutex::new((0u32, None::<String>)));
    let gate = Arc::new(Semaphore::new(plan.concurrency.max(1) as usize));
    let progress = Arc::new(on_progress);
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut tasks = Vec::with_capacity(plan.connections as usize);
    for i in 0..plan.connections {
        if Instant::now() > deadline {
            break;
        }
        if plan.rate > 0 {
            let due = started + Duration::from_secs_f64(f64::from(i) / f64::from(plan.rate));
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = gate.clone().acquire_owned().await?;
        let mut opts = plan.connect.clone();
        opts.client_id = format!("{}-conn-{i}", plan.client_prefix);
        opts.username = opts.username.map(|u| u.replace("{i}", &i.to_string()));
        opts.password = opts.password.map(|p| p.replace("{i}", &i.to_string()));
        if plan.sources > 0 {
            let n = 256 + i % plan.sources.min(65_000); // from 127.0.1.0
            opts.local_ip = Some(std::net::Ipv4Addr::new(127, 0, (n >> 8) as u8, n as u8).into());
        }
        let (held, latency, errors, progress) = (
            held.clone(),
            latency.clone(),
            errors.clone(),
            progress.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let result = connect(&opts, Duration::from_secs(10)).await;
            drop(permit);
            match result {
                Ok(conn) => {
                    let us = t0.elapsed().as_micros() as u64;
                    let _ = latency.lock().await.record(us.max(1));
                    let mut h = held.lock().await;
                    h.push(conn);
                    progress(h.len() as u32);
                }
                Err(e) => {
                    let mut errs = errors.lock().await;
                    errs.0 += 1;
                    errs.1.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }));
    }
    let attempted = tasks.len() as u32;
    for t in tasks {
        t.await?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let connected = held.lock().await.len() as u32;
    when_up(connected).await;
    tokio::time::sleep(plan.hold).await;
    held.lock().await.clear();
    let (failed, first_error) = errors.lock().await.clone();
    let latency = Latency::from_hist(&*latency.lock().await);
    Ok(ConnOutcome {
        attempted,
        connected,
        failed,
        first_error,
        elapsed_s: elapsed,
        connects_per_s: f64::from(connected) / elapsed.max(1e-9),
        connack_latency_us: latency,
    })
}
