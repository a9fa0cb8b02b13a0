//! Running a plan with a progress line, sampling the broker around it, and printing the
//! result as a table or as JSON.

use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::bench::{self, Plan};
use crate::conn::{self, ConnPlan};
use crate::procstat::{self, ProcSample};

/// The broker's resource use over a run.
#[derive(Debug, Clone, serde::Serialize)]
struct BrokerUse {
    before: ProcSample,
    after: ProcSample,
    cpu_seconds: f64,
}

fn sample(pid: Option<u32>) -> anyhow::Result<Option<ProcSample>> {
    pid.map(procstat::sample).transpose()
}

fn spinner() -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Runs a publish/subscribe plan and prints its outcome.
pub async fn bench(name: &str, plan: Plan, pid: Option<u32>, json: bool) -> anyhow::Result<()> {
    let bar = spinner();
    let before = sample(pid)?;
    let shown = plan.clone();
    let bar2 = bar.clone();
    let outcome = bench::run(plan, move |live| {
        tokio::spawn(async move {
            let mut last = (0u64, std::time::Instant::now());
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let (s, r) = ((live.sent)(), (live.received)());
                let dt = last.1.elapsed().as_secs_f64().max(1e-9);
                let rate = (r.saturating_sub(last.0)) as f64 / dt;
                last = (r, std::time::Instant::now());
                bar2.set_message(format!("sent {s}  received {r}  ({rate:.0} msg/s)"));
            }
        });
    })
    .await?;
    let after = sample(pid)?;
    bar.finish_and_clear();
    let broker = before.zip(after).map(|(b, a)| BrokerUse {
        before: b,
        after: a,
        cpu_seconds: a.cpu_seconds - b.cpu_seconds,
    });
    let cpu_us_per_msg = broker
        .as_ref()
        .filter(|_| outcome.received > 0)
        .map(|b| b.cpu_seconds * 1e6 / outcome.received as f64);
    if json {
        let v = serde_json::json!({
            "command": name,
            "topology": shown.topology,
            "publishers": shown.publishers,
            "subscribers": shown.subscribers,
            "qos": shown.qos.as_u8(),
            "payload": shown.payload,
            "rate": shown.rate,
            "window": shown.window,
            "count": shown.count,
            "outcome": outcome,
            "broker": broker,
            "broker_cpu_us_per_delivered": cpu_us_per_msg,
        });
        println!("{v}");
        return Ok(());
    }
    let o = &outcome;
    println!(
        "{name}: {:?} {}x pub -> {}x sub, QoS {}, {} B, rate {}, window {}",
        shown.topology,
        shown.publishers,
        shown.subscribers,
        shown.qos.as_u8(),
        shown.payload,
        if shown.rate == 0 {
            "max".to_string()
        } else {
            format!("{}/s", shown.rate)
        },
        shown.window
    );
    println!(
        "  sent        {:>12} ({:.0} msg/s), acked {}",
        o.sent, o.sent_per_s, o.acked
    );
    println!(
        "  delivered   {:>12} ({:.0} msg/s, {:.2} MB/s) in {:.2} s",
        o.received, o.delivered_per_s, o.delivered_mb_per_s, o.elapsed_s
    );
    println!(
        "  expected    {:>12}  lost {}  duplicates {}",
        o.expected, o.lost, o.duplicates
    );
    let l = &o.latency_us;
    println!(
        "  latency µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
        l.p50, l.p90, l.p99, l.p999, l.max, l.samples
    );
    if let (Some(b), Some(per)) = (&broker, cpu_us_per_msg) {
        println!(
            "  broker      {:.2} CPU s, {:.2} µs CPU per delivered message, RSS {} -> {} KiB",
            b.cpu_seconds,
            per,
            b.before.rss_bytes / 1024,
            b.after.rss_bytes / 1024
        );
    }
    Ok(())
}

/// Runs the hostile scenario and prints both phases.
pub async fn hostile(
    pair: Plan,
    attack: crate::hostile::AttackPlan,
    pid: Option<u32>,
    json: bool,
) -> anyhow::Result<()> {
    let bar = spinner();
    bar.set_message(format!(
        "innocent pair alone, then beside {:?}",
        attack.attacks
    ));
    let shown = attack.clone();
    let o = crate::hostile::run(pair, attack, pid).await?;
    bar.finish_and_clear();
    if json {
        println!(
            "{}",
            serde_json::json!({ "command": "hostile", "outcome": o })
        );
        return Ok(());
    }
    println!(
        "hostile: innocent pair vs {} x {:?}",
        shown.clients, shown.attacks
    );
    for (name, p) in [("alone", &o.baseline), ("attacked", &o.attacked)] {
        println!(
            "  {name:<9} {:>10.0} msg/s  lost {}  p50 {} µs  p99 {} µs  max {} µs",
            p.delivered_per_s, p.lost, p.latency_us.p50, p.latency_us.p99, p.latency_us.max
        );
    }
    println!("  rate kept {:.1}%", o.rate_ratio * 100.0);
    println!(
        "  attackers {} connections, {} refused or closed, {} packets",
        o.attackers.connections, o.attackers.refused_or_closed, o.attackers.packets
    );
    if let (Some(b), Some(p), Some(a)) =
        (o.broker_rss_before, o.broker_rss_peak, o.broker_rss_after)
    {
        println!(
            "  broker RSS {} -> peak {} -> {} MiB",
            b >> 20,
            p >> 20,
            a >> 20
        );
    }
    Ok(())
}

/// Runs a connection plan and prints its outcome.
pub async fn conn(plan: ConnPlan, pid: Option<u32>, json: bool) -> anyhow::Result<()> {
    let bar = spinner();
    let before = sample(pid)?;
    let total = plan.connections;
    let bar2 = bar.clone();
    let during = Arc::new(std::sync::Mutex::new(None::<ProcSample>));
    let during2 = during.clone();
    let outcome = conn::run(
        plan,
        async move |_connected| {
            // Let the broker settle, then measure while everything is held open.
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(s) = sample(pid) {
                if let Ok(mut d) = during2.lock() {
                    *d = s;
                }
            }
        },
        move |n| bar2.set_message(format!("{n}/{total} connected")),
    )
    .await?;
    bar.finish_and_clear();
    let during = during.lock().ok().and_then(|d| *d);
    let per_conn = before
        .zip(during)
        .filter(|_| outcome.connected > 0)
        .map(|(b, d)| (d.rss_bytes as f64 - b.rss_bytes as f64) / f64::from(outcome.connected));
    let cpu_per_conn = before
        .zip(during)
        .filter(|_| outcome.connected > 0)
        .map(|(b, d)| (d.cpu_seconds - b.cpu_seconds) * 1e6 / f64::from(outcome.connected));
    if json {
        let v = serde_json::json!({
            "command": "conn",
            "outcome": outcome,
            "broker_before": before,
            "broker_during": during,
            "broker_rss_bytes_per_connection": per_conn,
            "broker_cpu_us_per_connection": cpu_per_conn,
        });
        println!("{v}");
        return Ok(());
    }
    let o = &outcome;
    println!(
        "conn: {} attempted, {} connected, {} failed in {:.2} s ({:.0} connects/s)",
        o.attempted, o.connected, o.failed, o.elapsed_s, o.connects_per_s
    );
    if let Some(e) = &o.first_error {
        println!("  first error: {e}");
    }
    let l = &o.connack_latency_us;
    println!(
        "  CONNACK µs  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
        l.p50, l.p90, l.p99, l.p999, l.max
    );
    if let (Some(rss), Some(cpu)) = (per_conn, cpu_per_conn) {
        println!("  broker      {rss:.0} B RSS and {cpu:.1} µs CPU per connection");
    }
    Ok(())
}
