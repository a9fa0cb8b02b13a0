//! Publish/subscribe load: topologies, publishers at a fixed rate or as fast as an inflight
//! window allows, subscribers that measure latency, loss and duplicates. Every run stops by
//! itself: at its message count or its duration, whichever comes first.

use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use messs_codec::{Packet, PubResponse, Publish, PublishProperties, QoS, QosPid, TopicName};
use tokio::sync::{mpsc, Semaphore};

use crate::payload::{now_nanos, read_header, write_header, SeenSet, HEADER_LEN};
use crate::proto::{connect, subscribe, ConnectOptions, Reader, Writer};

/// Who publishes to whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// Many publishers, each on its own topic; subscribers on a wildcard matching all.
    FanIn,
    /// One publisher; every subscriber on its topic.
    FanOut,
    /// Publisher i to subscriber i, each pair on its own topic.
    Pairs,
    /// Many publishers; subscribers share one `$share/...` wildcard subscription.
    Shared,
}

/// A run's parameters.
#[derive(Debug, Clone)]
pub struct Plan {
    pub topology: Topology,
    pub publishers: u32,
    pub subscribers: u32,
    pub qos: QoS,
    pub payload: usize,
    /// Total msg/s over all publishers; 0 = as fast as the window allows.
    pub rate: u64,
    /// Unacknowledged QoS 1/2 messages per publisher.
    pub window: u16,
    /// Total messages over all publishers.
    pub count: u64,
    pub duration: Duration,
    /// Topic template; `{i}` is the publisher index.
    pub topic: String,
    pub connect: ConnectOptions,
    pub client_prefix: String,
    /// Subscribers use persistent sessions (clean start 0; v5 session expiry one hour), so
    /// a broker with durable storage keeps what it queues for them.
    pub persistent_subscribers: bool,
}

impl Plan {
    fn topic_for(&self, i: u32) -> String {
        self.topic.replace("{i}", &i.to_string())
    }

    fn wildcard(&self) -> String {
        self.topic.replace("{i}", "+")
    }

    /// The filter subscriber `i` uses.
    fn filter_for(&self, i: u32) -> String {
        match self.topology {
            Topology::FanIn => self.wildcard(),
            Topology::FanOut => self.topic_for(0),
            Topology::Pairs => self.topic_for(i),
            Topology::Shared => format!("$share/messs-load/{}", self.wildcard()),
        }
    }
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PubCounters {
    sent: AtomicU64,
    acked: AtomicU64,
}

/// What one subscriber saw (live counters for the progress line and completion).
#[derive(Debug, Default)]
struct SubCounters {
    received: AtomicU64,
}

struct SubResult {
    seen: SeenSet,
    received: u64,
    duplicates: u64,
    latency: Histogram<u64>,
    last_receive: Option<Instant>,
}

/// Results of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub sent: u64,
    pub acked: u64,
    pub received: u64,
    pub expected: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Seconds from the first send to the last receive (or the last send without subscribers).
    pub elapsed_s: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    pub delivered_mb_per_s: f64,
    pub latency_us: Latency,
    /// Loss per subscriber (or per shared group), in subscriber order.
    pub lost_per_subscriber: Vec<u64>,
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub samples: u64,
}

impl Latency {
    pub fn from_hist(h: &Histogram<u64>) -> Self {
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            samples: h.len(),
        }
    }
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")
}

/// Live totals for the progress line.
pub struct Live {
    pub sent: Box<dyn Fn() -> u64 + Send + Sync>,
    pub received: Box<dyn Fn() -> u64 + Send + Sync>,
}

/// Runs a plan; `progress` is called with live totals while it runs.
pub async fn run(plan: Plan, on_live: impl FnOnce(Live)) -> anyhow::Result<Outcome> {
    let plan = Arc::new(plan);
    let stop = Arc::new(AtomicBool::new(false));

    // Subscribers first, so nothing published is missed.
    let mut sub_tasks = Vec::new();
    let mut sub_counters = Vec::new();
    for i in 0..plan.subscribers {
        let mut opts = plan.connect.clone();
        opts.client_id = format!("{}-sub-{i}", plan.client_prefix);
        if plan.persistent_subscribers {
            opts.clean = false;
            opts.session_expiry = Some(3600);
        }
        opts.username = opts.username.map(|u| u.replace("{i}", &i.to_string()));
        opts.password = opts.password.map(|p| p.replace("{i}", &i.to_string()));
        let (mut r, mut w) = connect(&opts, Duration::from_secs(10))
            .await
            .with_context(|| format!("subscriber {i}"))?;
        subscribe(&mut r, &mut w, &plan.filter_for(i), plan.qos).await?;
        let counters = Arc::new(SubCounters::default());
        sub_counters.push(counters.clone());
        sub_tasks.push(tokio::spawn(subscriber(r, w, counters, stop.clone())));
    }

    let per_pub = plan.count / u64::from(plan.publishers.max(1));
    let mut pub_tasks = Vec::new();
    let mut pub_counters = Vec::new();
    let mut conns = Vec::new();
    for i in 0..plan.publishers {
        let mut opts = plan.connect.clone();
        opts.client_id = format!("{}-pub-{i}", plan.client_prefix);
        opts.username = opts.username.map(|u| u.replace("{i}", &i.to_string()));
        opts.password = opts.password.map(|p| p.replace("{i}", &i.to_string()));
        conns.push(
            connect(&opts, Duration::from_secs(10))
                .await
                .with_context(|| format!("publisher {i}"))?,
        );
    }
    let live_pubs: Vec<Arc<PubCounters>> = (0..plan.publishers)
        .map(|_| Arc::new(PubCounters::default()))
        .collect();
    {
        let p = live_pubs.clone();
        let s = sub_counters.clone();
        on_live(Live {
            sent: Box::new(move || p.iter().map(|c| c.sent.load(Ordering::Relaxed)).sum()),
            received: Box::new(move || s.iter().map(|c| c.received.load(Ordering::Relaxed)).sum()),
        });
    }
    let started = Instant::now();
    let deadline = started + plan.duration;
    for (i, (r, w)) in conns.into_iter().enumerate() {
        let counters = live_pubs[i].clone();
        pub_counters.push(counters.clone());
        let plan = plan.clone();
        pub_tasks.push(tokio::spawn(publisher(
            plan, i as u32, per_pub, r, w, counters, deadline,
        )));
    }
    for t in pub_tasks {
        t.await??;
    }
    if plan.publishers == 0 {
        // Subscribe-only: receive until --count arrive or the duration ends.
        while Instant::now() < deadline {
            let total: u64 = sub_counters
                .iter()
                .map(|c| c.received.load(Ordering::Relaxed))
                .sum();
            if total >= plan.count {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let publish_done = Instant::now();

    // Wait for deliveries to arrive: until the subscribers have what was sent, or a grace
    // period with no progress passes.
    let sent_by: Vec<u64> = pub_counters
        .iter()
        .map(|c| c.sent.load(Ordering::Relaxed))
        .collect();
    let total_sent: u64 = sent_by.iter().sum();
    let expected_per_sub: Vec<u64> = (0..plan.subscribers)
        .map(|i| match plan.topology {
            Topology::FanIn => total_sent,
            Topology::FanOut => sent_by.first().copied().unwrap_or(0),
            Topology::Pairs => sent_by.get(i as usize).copied().unwrap_or(0),
            Topology::Shared => 0,
        })
        .collect();
    let expected_total: u64 = match plan.topology {
        _ if plan.publishers == 0 => 0,
        Topology::Shared if plan.subscribers > 0 => total_sent,
        _ => expected_per_sub.iter().sum(),
    };
    let mut last_total = 0;
    let mut last_change = Instant::now();
    let grace = Duration::from_secs(2);
    while !sub_counters.is_empty() {
        let total: u64 = sub_counters
            .iter()
            .map(|c| c.received.load(Ordering::Relaxed))
            .sum();
        if total >= expected_total || last_change.elapsed() > grace {
            break;
        }
        if total != last_total {
            last_total = total;
            last_change = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);

    let mut results = Vec::new();
    for t in sub_tasks {
        results.push(t.await??);
    }
    let mut latency = histogram()?;
    let mut received = 0;
    let mut duplicates = 0;
    let mut last_receive = None::<Instant>;
    for r in &results {
        latency.add(&r.latency).context("merging histograms")?;
        received += r.received;
        duplicates += r.duplicates;
        last_receive = last_receive.max(r.last_receive);
    }
    let lost_per_subscriber: Vec<u64> = if plan.topology == Topology::Shared {
        let mut all = SeenSet::default();
        for r in &results {
            duplicates += all.merge(&r.seen);
        }
        let unique: u64 = (0..plan.publishers).map(|p| all.count(p)).sum();
        vec![total_sent.saturating_sub(unique)]
    } else {
        results
            .iter()
            .zip(&expected_per_sub)
            .map(|(r, &exp)| {
                let unique: u64 = (0..plan.publishers).map(|p| r.seen.count(p)).sum();
                exp.saturating_sub(unique)
            })
            .collect()
    };
    let end = match last_receive {
        Some(t) if plan.subscribers > 0 => t,
        _ => publish_done,
    };
    let elapsed = end.duration_since(started).as_secs_f64().max(1e-9);
    let send_elapsed = publish_done.duration_since(started).as_secs_f64().max(1e-9);
    Ok(Outcome {
        sent: total_sent,
        acked: pub_counters
            .iter()
            .map(|c| c.acked.load(Ordering::Relaxed))
            .sum(),
        received,
        expected: expected_total,
        lost: lost_per_subscriber.iter().sum(),
        duplicates,
        elapsed_s: elapsed,
        sent_per_s: total_sent as f64 / send_elapsed,
        delivered_per_s: received as f64 / elapsed,
        delivered_mb_per_s: received as f64 * plan.payload as f64 / elapsed / 1e6,
        latency_us: Latency::from_hist(&latency),
        lost_per_subscriber,
    })
}

/// Sends `count` messages (or until `deadline`), at the plan's rate or as fast as the window
/// allows, then waits briefly for outstanding acknowledgements.
async fn publisher(
    plan: Arc<Plan>,
    index: u32,
    count: u64,
    mut reader: Reader,
    mut writer: Writer,
    counters: Arc<PubCounters>,
    deadline: Instant,
) -> anyhow::Result<()> {
    const BATCH: u64 = 64;
    let topic = TopicName::new(&plan.topic_for(index))?;
    let window = Arc::new(Semaphore::new(usize::from(plan.window.max(1))));
    let (rel_tx, mut rel_rx) = mpsc::unbounded_channel::<NonZeroU16>();
    let qos = plan.qos;
    // Acknowledgements come back on the reading half.
    let ack_task = {
        let window = window.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            loop {
                batch.clear();
                match reader.next_batch(&mut batch).await {
                    Ok(true) => {}
                    _ => return,
                }
                for p in batch.drain(..) {
                    match p {
                        Packet::PubAck(_) | Packet::PubComp(_) => {
                            counters.acked.fetch_add(1, Ordering::Relaxed);
                            window.add_permits(1);
                        }
                        Packet::PubRec(r) => {
                            let _ = rel_tx.send(r.packet_id);
                        }
                        _ => {}
                    }
                }
            }
        })
    };
    let mut payload = vec![0xA5u8; plan.payload.max(HEADER_LEN)];
    let per_pub_rate = plan.rate as f64 / f64::from(plan.publishers.max(1));
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq = 0u64;
    let mut next_pid: u16 = 0;
    while seq < count && Instant::now() < deadline {
        let mut allowed = BATCH.min(count - seq);
        if per_pub_rate > 0.0 {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * per_pub_rate) as u64;
            allowed = allowed.min(due.saturating_sub(seq));
        }
        // Answer PUBRECs first so the window can drain.
        while let Ok(pid) = rel_rx.try_recv() {
            writer.queue(&Packet::PubRel(PubResponse::success(pid)))?;
        }
        let mut n = 0;
        while n < allowed {
            if qos != QoS::AtMostOnce {
                match window.clone().try_acquire_owned() {
                    Ok(p) => p.forget(),
                    Err(_) if n == 0 => {
                        writer.flush().await?;
                        tokio::select! {
                            p = window.clone().acquire_owned() => p?.forget(),
                            Some(pid) = rel_rx.recv() => {
                                writer.queue(&Packet::PubRel(PubResponse::success(pid)))?;
                                continue;
                            }
                        }
                    }
                    Err(_) => break,
                }
            }
            next_pid = next_pid.checked_add(1).unwrap_or(1);
            let pid = NonZeroU16::new(next_pid).unwrap_or(NonZeroU16::MIN);
            write_header(&mut payload, index, seq);
            let publish = Publish {
                dup: false,
                qos_pid: QosPid::new(qos, pid),
                retain: false,
                topic: topic.clone(),
                properties: PublishProperties::default(),
                payload: Bytes::copy_from_slice(&payload),
            };
            messs_codec::encode_publish(&publish, writer.protocol, &mut writer.buf)?;
            seq += 1;
            n += 1;
        }
        writer.flush().await?;
        counters.sent.store(seq, Ordering::Relaxed);
    }
    counters.sent.store(seq, Ordering::Relaxed);
    // Wait (bounded) for the last acknowledgements, answering PUBRECs meanwhile.
    if qos != QoS::AtMostOnce {
        let until = Instant::now() + Duration::from_secs(5);
        while counters.acked.load(Ordering::Relaxed) < seq && Instant::now() < until {
            while let Ok(pid) = rel_rx.try_recv() {
                writer.queue(&Packet::PubRel(PubResponse::success(pid)))?;
            }
            writer.flush().await?;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    ack_task.abort();
    Ok(())
}

/// Receives until told to stop, acknowledging as a QoS 1/2 client must.
async fn subscriber(
    mut reader: Reader,
    mut writer: Writer,
    counters: Arc<SubCounters>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<SubResult> {
    let mut result = SubResult {
        seen: SeenSet::default(),
        received: 0,
        duplicates: 0,
        latency: histogram()?,
        last_receive: None,
    };
    let mut batch = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        let more =
            tokio::time::timeout(Duration::from_millis(50), reader.next_batch(&mut batch)).await;
        match more {
            Err(_) => continue,
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => break,
            Ok(Err(e)) => return Err(e),
        }
        let now = now_nanos();
        for p in batch.drain(..) {
            match p {
                Packet::Publish(p) => {
                    result.received += 1;
                    if let Some(h) = read_header(&p.payload) {
                        let us = now.saturating_sub(h.sent_nanos) / 1000;
                        let _ = result.latency.record(us.max(1));
                        if !result.seen.insert(h.publisher, h.seq) {
                            result.duplicates += 1;
                        }
                    }
                    match p.qos_pid {
                        QosPid::AtMostOnce => {}
                        QosPid::AtLeastOnce(id) => {
                            writer.queue(&Packet::PubAck(PubResponse::success(id)))?
                        }
                        QosPid::ExactlyOnce(id) => {
                            writer.queue(&Packet::PubRec(PubResponse::success(id)))?
                        }
                    }
                }
                Packet::PubRel(r) => {
                    writer.queue(&Packet::PubComp(PubResponse::success(r.packet_id)))?
                }
                _ => {}
            }
        }
        result.last_receive = Some(Instant::now());
        counters.received.store(result.received, Ordering::Relaxed);
        writer.flush().await?;
    }
    Ok(result)
}
