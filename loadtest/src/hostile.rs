//! A hostile-client scenario: an innocent publisher/subscriber pair measured alone, then
//! again while attackers run beside it — subscribers to `#` that never read and reconnect,
//! clients that subscribe to very deep filters or repeat `#` in one SUBSCRIBE, reconnect
//! churn with fresh client ids and a session expiry, and a flood of retained messages. It
//! reports the pair's rate and p99 in both phases and the broker's RSS. Every attacker stops
//! when its phase ends; the whole run is bounded by the pair's count and duration.

use std::num::NonZeroU16;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use messs_codec::{
    Packet, Publish, PublishProperties, QoS, QosPid, Subscribe, Subscription, SubscriptionOptions,
    TopicFilter, TopicName,
};

use crate::bench::{self, Outcome, Plan};
use crate::procstat;
use crate::proto::{connect, ConnectOptions};

/// Kinds of attacker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Subscribers to `#` that never read, reconnecting every `--reconnect`.
    NeverRead,
    /// SUBSCRIBE/UNSUBSCRIBE of filters of thousands of empty levels, over and over.
    Deep,
    /// One SUBSCRIBE repeating `#` 256 times, reconnecting after each.
    HashFlood,
    /// Connect and drop with a fresh client id and a session expiry, as fast as possible.
    Churn,
    /// Retained 1 KiB messages to ever new topics.
    RetainedFlood,
    /// QoS 0 messages of 64 bytes to a topic of its own, as fast as the broker reads them
    /// (a device gone haywire; nobody subscribes to them).
    Flood,
    /// Connect and drop with the same client id, over and over (a flapping device; a
    /// broker that detects flapping bans the id for a while).
    Flapping,
    /// Logins with wrong passwords, over and over (usernames `intruder{i}`, in the pair's
    /// tenant when its username names one as NAME@TENANT).
    WrongPassword,
}

/// The attackers of one run.
#[derive(Debug, Clone)]
pub struct AttackPlan {
    pub attacks: Vec<Attack>,
    /// Attacker connections per kind.
    pub clients: u32,
    /// How often a never-reading subscriber reconnects.
    pub reconnect: Duration,
    pub connect: ConnectOptions,
    pub client_prefix: String,
}

/// What the attackers managed (counted on their side).
#[derive(Debug, Default, serde::Serialize)]
pub struct AttackCounts {
    pub connections: u64,
    pub refused_or_closed: u64,
    pub packets: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    refused_or_closed: AtomicU64,
    packets: AtomicU64,
}

/// Results of both phases.
#[derive(Debug, serde::Serialize)]
pub struct HostileOutcome {
    pub baseline: Outcome,
    pub attacked: Outcome,
    /// Attacked rate over baseline rate.
    pub rate_ratio: f64,
    pub attackers: AttackCounts,
    pub broker_rss_before: Option<u64>,
    pub broker_rss_peak: Option<u64>,
    pub broker_rss_after: Option<u64>,
}

/// Runs the pair alone, then under attack.
pub async fn run(
    pair: Plan,
    attack: AttackPlan,
    pid: Option<u32>,
) -> anyhow::Result<HostileOutcome> {
    let rss = move || {
        pid.and_then(|p| procstat::sample(p).ok())
            .map(|s| s.rss_bytes)
    };
    let broker_rss_before = rss();
    let baseline = bench::run(pair.clone(), |_| {}).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(Counters::default());
    // The attackers get a runtime (and thread) of their own: flooding tasks on the pair's
    // runtime would starve the pair inside this tool and blame the broker for it.
    let attack_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("attackers")
        .enable_all()
        .build()?;
    let mut tasks = Vec::new();
    for kind in &attack.attacks {
        for i in 0..attack.clients {
            let (stop, counters, plan) = (stop.clone(), counters.clone(), attack.clone());
            let kind = *kind;
            tasks.push(attack_rt.spawn(async move {
                attacker(kind, i, &plan, &stop, &counters).await;
            }));
        }
    }
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(r) = rss() {
                    peak.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Let the attackers get going before the pair is measured again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut attacked_plan = pair;
    attacked_plan.client_prefix = format!("{}-attacked", attacked_plan.client_prefix);
    let attacked = bench::run(attacked_plan, |_| {}).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = sampler.await;
    attack_rt.shutdown_background();
    let attacked = attacked?;
    let rate_ratio = if baseline.delivered_per_s > 0.0 {
        attacked.delivered_per_s / baseline.delivered_per_s
    } else {
        0.0
    };
    Ok(HostileOutcome {
        baseline,
        attacked,
        rate_ratio,
        attackers: AttackCounts {
            connections: counters.connections.load(Ordering::Relaxed),
            refused_or_closed: counters.refused_or_closed.load(Ordering::Relaxed),
            packets: counters.packets.load(Ordering::Relaxed),
        },
        broker_rss_before,
        broker_rss_peak: pid.map(|_| peak.load(Ordering::Relaxed)),
        broker_rss_after: rss(),
    })
}

fn subscribe_packet(filters: &[String]) -> anyhow::Result<Packet> {
    let subscriptions = filters
        .iter()
        .map(|f| {
            Ok(Subscription {
                filter: TopicFilter::new(f)?,
                options: SubscriptionOptions::new(QoS::AtLeastOnce),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Packet::Subscribe(Box::new(Subscribe {
        packet_id: NonZeroU16::MIN,
        properties: Default::default(),
        subscriptions,
    })))
}

/// One attacker, looping until `stop`. Errors (refusals, closed connections) are counted
/// and the attacker carries on: being refused is the broker doing its job.
async fn attacker(kind: Attack, i: u32, plan: &AttackPlan, stop: &AtomicBool, c: &Counters) {
    // Start spread over the first second, as clients that keep coming do, instead of one
    // synchronised burst per round (a burst of connections is an attack of its own).
    let spread =
        Duration::from_secs(1).as_micros() as u64 * u64::from(i) / u64::from(plan.clients.max(1));
    tokio::time::sleep(Duration::from_micros(spread)).await;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let mut opts = plan.connect.clone();
        opts.client_id = if kind == Attack::Flapping {
            format!("{}-{kind:?}-{i}", plan.client_prefix)
        } else {
            format!("{}-{kind:?}-{i}-{round}", plan.client_prefix)
        };
        if kind == Attack::Churn {
            opts.clean = false;
            opts.session_expiry = Some(3600);
        }
        if kind == Attack::WrongPassword {
            let tenant = opts
                .username
                .as_deref()
                .and_then(|u| u.rsplit_once('@'))
                .map(|(_, t)| format!("@{t}"))
                .unwrap_or_default();
            opts.username = Some(format!("intruder{i}{tenant}"));
            opts.password = Some(format!("wrong-password-{round}"));
        }
        let result = one_round(kind, &opts, plan, stop, c).await;
        c.connections.fetch_add(1, Ordering::Relaxed);
        if result.is_err() {
            c.refused_or_closed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn one_round(
    kind: Attack,
    opts: &ConnectOptions,
    plan: &AttackPlan,
    stop: &AtomicBool,
    c: &Counters,
) -> anyhow::Result<()> {
    let (mut r, mut w) = connect(opts, Duration::from_secs(10)).await?;
    match kind {
        Attack::NeverRead => {
            w.queue(&subscribe_packet(&["#".into()])?)?;
            w.flush().await?;
            c.packets.fetch_add(1, Ordering::Relaxed);
            // Never read again; hold the connection until it is time to come back.
            let until = tokio::time::Instant::now() + plan.reconnect;
            while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            drop(r);
        }
        Attack::Deep => {
            let deep = "/".repeat(5434);
            w.queue(&subscribe_packet(&[deep])?)?;
            w.flush().await?;
            c.packets.fetch_add(1, Ordering::Relaxed);
            // The broker closes it (too many levels); wait for that.
            while r.next().await?.is_some() {}
            anyhow::bail!("closed");
        }
        Attack::HashFlood => {
            w.queue(&subscribe_packet(&vec!["#".to_string(); 256])?)?;
            w.flush().await?;
            c.packets.fetch_add(1, Ordering::Relaxed);
            // Read a little (the SUBACK and some retained messages), then leave.
            let _ = tokio::time::timeout(Duration::from_millis(200), r.next()).await;
        }
        Attack::Churn | Attack::Flapping | Attack::WrongPassword => {}
        Attack::RetainedFlood | Attack::Flood => {
            let retain = kind == Attack::RetainedFlood;
            let payload = Bytes::from(vec![0u8; if retain { 1024 } else { 64 }]);
            let own_topic = TopicName::new(&format!("{}/flood", opts.client_id))?;
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && (!retain || n < 100_000) {
                n += 1;
                let topic = if retain {
                    TopicName::new(&format!("{}/retained/{n}", opts.client_id))?
                } else {
                    own_topic.clone()
                };
                w.queue(&Packet::Publish(Box::new(Publish {
                    dup: false,
                    qos_pid: QosPid::AtMostOnce,
                    retain,
                    topic,
                    properties: PublishProperties::default(),
                    payload: payload.clone(),
                })))?;
                if n.is_multiple_of(64) {
                    w.flush().await?;
                    c.packets.fetch_add(64, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                }
            }
            w.flush().await?;
        }
    }
    Ok(())
}
