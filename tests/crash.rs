//! Crash tests on the real `messs` binary: acknowledged state is on disk before its
//! acknowledgement, so a SIGKILL loses none of it. Each run sets up QoS 1 messages queued
//! for an offline persistent session, a retained message, a pending delayed will, and QoS 2
//! flows cut mid-way in both directions; kills the broker with SIGKILL; restarts it on the
//! same data directory; and checks that everything acknowledged is there — none lost, none
//! duplicated except redeliveries flagged DUP. At `none` the broker acknowledges before
//! writing, so losses are allowed there (and reported), duplicates still are not. The
//! operator commands (`messs storage verify|checkpoint|compact`) run on the killed broker's
//! directory at the end. A SIGHUP reloads the limits and bans of the configuration file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{connect_packet, pid, publish, Broker, Client};
use messs_codec::{Packet, PubResponse, QoS, QosPid, ReasonCode, TopicName, Will, WillProperties};

const MESSAGES: usize = 500;

/// What one crash run observed after the restart.
#[derive(Debug)]
struct Outcome {
    /// Distinct QoS 1 messages the offline session received (of `MESSAGES`).
    received: usize,
    /// The same message received twice without DUP.
    unflagged_duplicates: usize,
    session_restored: bool,
    retained_restored: bool,
    will_published: bool,
    qos2_inbound_completed: bool,
    qos2_outbound_resumed: bool,
    inflight_resent_with_dup: bool,
}

async fn crash_run(durability: &str) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), durability);
    let addr = broker.addr;

    // An offline persistent session with QoS 1 and QoS 2 subscriptions.
    let (mut sub, _) = Client::connect(addr, connect_packet("sub", true, None)).await;
    sub.subscribe("crash/q", QoS::AtLeastOnce).await;
    sub.subscribe("crash/in2", QoS::ExactlyOnce).await;
    sub.send(&Packet::Disconnect(messs_codec::Disconnect::new(
        ReasonCode::Success,
    )))
    .await;
    drop(sub);

    // An online persistent subscriber that stops mid-way through QoS 1 and QoS 2.
    let (mut sub2, _) = Client::connect(addr, connect_packet("sub2", true, None)).await;
    sub2.subscribe("crash/out/#", QoS::ExactlyOnce).await;

    // A client with a will delayed 3 s, gone abnormally.
    let will = Will {
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: TopicName::new("crash/will").unwrap(),
        payload: Bytes::from_static(b"gone"),
        properties: WillProperties {
            will_delay_interval: Some(3),
            ..WillProperties::default()
        },
    };
    let (dying, _) = Client::connect(addr, connect_packet("dying", true, Some(will))).await;
    drop(dying);

    // N QoS 1 messages, pipelined, every one acknowledged; and a retained message.
    let (mut publisher, _) = Client::connect(addr, connect_packet("pub", true, None)).await;
    for i in 0..MESSAGES {
        let p = publish(
            "crash/q",
            format!("m{i}").into_bytes(),
            QosPid::AtLeastOnce(pid(i as u16 + 1)),
            false,
        );
        publisher.send(&p).await;
    }
    for _ in 0..MESSAGES {
        match publisher.recv().await {
            Packet::PubAck(r) => assert_eq!(r.reason, ReasonCode::Success),
            other => panic!("expected PUBACK, got {other:?}"),
        }
    }
    publisher
        .send(&publish(
            "crash/r",
            b"retained".to_vec(),
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    // Inbound QoS 2 cut after PUBREC.
    publisher
        .send(&publish(
            "crash/in2",
            b"exactly once".to_vec(),
            QosPid::ExactlyOnce(pid(9)),
            false,
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(r) if r.packet_id == pid(9)));
    // Outbound: a QoS 1 message received, not acknowledged; a QoS 2 one cut after PUBREL.
    publisher
        .send(&publish(
            "crash/out/1",
            b"q1".to_vec(),
            QosPid::AtLeastOnce(pid(2)),
            false,
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    let Packet::Publish(first) = sub2.recv().await else {
        panic!("sub2 expected the QoS 1 message")
    };
    publisher
        .send(&publish(
            "crash/out/2",
            b"q2".to_vec(),
            QosPid::ExactlyOnce(pid(3)),
            false,
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubRec(_)));
    publisher
        .send(&Packet::PubRel(PubResponse::success(pid(3))))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubComp(_)));
    let Packet::Publish(second) = sub2.recv().await else {
        panic!("sub2 expected the QoS 2 message")
    };
    let QosPid::ExactlyOnce(second_id) = second.qos_pid else {
        panic!("{second:?}")
    };
    sub2.send(&Packet::PubRec(PubResponse::success(second_id)))
        .await;
    assert!(matches!(sub2.recv().await, Packet::PubRel(r) if r.packet_id == second_id));
    // At wal and fsync, what was acknowledged is on disk now. Let the broker write the
    // unacknowledged state it keeps for sub2 (PUBREL sent, in-flight ids): those writes
    // have no acknowledgement to wait on.
    tokio::time::sleep(Duration::from_millis(200)).await;

    broker.kill();
    let broker = Broker::start(dir.path(), durability);
    let addr = broker.addr;

    let mut outcome = Outcome {
        received: 0,
        unflagged_duplicates: 0,
        session_restored: false,
        retained_restored: false,
        will_published: false,
        qos2_inbound_completed: false,
        qos2_outbound_resumed: false,
        inflight_resent_with_dup: false,
    };
    let mut watcher_conn = connect_packet("watcher", true, None);
    watcher_conn.properties.session_expiry_interval = None;
    let (mut watcher, _) = Client::connect(addr, watcher_conn).await;
    watcher.subscribe("crash/will", QoS::AtLeastOnce).await;

    // The offline session gets every acknowledged message, once, in order.
    let (mut sub, present) = Client::connect(addr, connect_packet("sub", false, None)).await;
    outcome.session_restored = present;
    let mut seen = BTreeSet::new();
    let mut got_in2 = 0;
    while let Some(p) = sub.recv_within(Duration::from_secs(2)).await {
        let Packet::Publish(p) = p else { continue };
        match p.qos_pid {
            QosPid::AtLeastOnce(id) => sub.send(&Packet::PubAck(PubResponse::success(id))).await,
            QosPid::ExactlyOnce(id) => sub.send(&Packet::PubRec(PubResponse::success(id))).await,
            QosPid::AtMostOnce => {}
        }
        if p.topic.as_str() == "crash/in2" {
            got_in2 += 1;
            continue;
        }
        let text = String::from_utf8(p.payload.to_vec()).unwrap();
        if !seen.insert(text) && !p.dup {
            outcome.unflagged_duplicates += 1;
        }
    }
    outcome.received = seen.len();

    // The publisher's QoS 2 exchange completes without routing the message twice.
    let (mut publisher, present) = Client::connect(addr, connect_packet("pub", false, None)).await;
    if present {
        let Packet::Publish(mut again) = publish(
            "crash/in2",
            b"exactly once".to_vec(),
            QosPid::ExactlyOnce(pid(9)),
            false,
        ) else {
            unreachable!()
        };
        again.dup = true;
        publisher.send(&Packet::Publish(again)).await;
        let rec = publisher.recv().await;
        publisher
            .send(&Packet::PubRel(PubResponse::success(pid(9))))
            .await;
        let comp = publisher.recv().await;
        outcome.qos2_inbound_completed = matches!(rec, Packet::PubRec(_))
            && matches!(comp, Packet::PubComp(r) if r.reason == ReasonCode::Success);
        while let Some(p) = sub.recv_within(Duration::from_millis(500)).await {
            if matches!(&p, Packet::Publish(p) if p.topic.as_str() == "crash/in2") {
                got_in2 += 1;
            }
        }
        outcome.qos2_inbound_completed &= got_in2 == 1;
    }

    // sub2 gets its QoS 1 message again (DUP, same id) and the PUBREL again.
    let (mut sub2, present) = Client::connect(addr, connect_packet("sub2", false, None)).await;
    if present {
        let mut packets = Vec::new();
        while let Some(p) = sub2.recv_within(Duration::from_millis(800)).await {
            packets.push(p);
        }
        outcome.inflight_resent_with_dup = packets.iter().any(|p| {
            matches!(p, Packet::Publish(p) if p.dup && p.qos_pid == first.qos_pid && &p.payload[..] == b"q1")
        });
        outcome.qos2_outbound_resumed = packets
            .iter()
            .any(|p| matches!(p, Packet::PubRel(r) if r.packet_id == second_id));
    }

    // The retained message, and the will once its delay has passed.
    let (mut fresh, _) = Client::connect(addr, connect_packet("fresh", true, None)).await;
    fresh.subscribe("crash/r", QoS::AtLeastOnce).await;
    outcome.retained_restored = matches!(
        fresh.recv_within(Duration::from_secs(2)).await,
        Some(Packet::Publish(p)) if &p.payload[..] == b"retained"
    );
    outcome.will_published = matches!(
        watcher.recv_within(Duration::from_secs(6)).await,
        Some(Packet::Publish(p)) if &p.payload[..] == b"gone"
    );
    drop(broker);
    outcome
}

fn assert_nothing_lost(level: &str, o: &Outcome) {
    assert!(o.session_restored, "{level}: {o:?}");
    assert_eq!(
        o.received, MESSAGES,
        "{level}: acknowledged messages lost: {o:?}"
    );
    assert_eq!(o.unflagged_duplicates, 0, "{level}: {o:?}");
    assert!(o.retained_restored, "{level}: {o:?}");
    assert!(o.will_published, "{level}: {o:?}");
    assert!(o.qos2_inbound_completed, "{level}: {o:?}");
    assert!(o.qos2_outbound_resumed, "{level}: {o:?}");
    assert!(o.inflight_resent_with_dup, "{level}: {o:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_wal_loses_nothing_acknowledged() {
    let o = crash_run("wal").await;
    assert_nothing_lost("wal", &o);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_fsync_loses_nothing_acknowledged() {
    let o = crash_run("fsync").await;
    assert_nothing_lost("fsync", &o);
}

/// `none` acknowledges before writing (and skips the write-ahead log): a crash may lose
/// what was acknowledged — that is its documented trade — but never duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_none_may_lose_but_never_duplicates() {
    let o = crash_run("none").await;
    eprintln!("durability none after SIGKILL: {o:?}");
    assert_eq!(o.unflagged_duplicates, 0, "{o:?}");
    assert!(o.received <= MESSAGES);
}

/// SIGHUP makes the broker read its configuration file's `[bans]` (and the other limits)
/// again: a client id banned in the edited file is refused from then on; a file that does
/// not parse changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_bans_and_limits_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "wal");
    let config = dir.path().join("messs.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let hup = |pid: u32| {
        let ok = Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -HUP");
    };
    let code = |id: &'static str| Client::connack_code(broker.addr, connect_packet(id, true, None));
    assert_eq!(code("x").await, ReasonCode::Success);
    // A broken file first: nothing changes.
    std::fs::write(&config, format!("{original}\n[bans]\nclient_ids = 7\n")).unwrap();
    hup(broker.child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code("x").await, ReasonCode::Success);
    std::fs::write(
        &config,
        format!("{original}\n[bans]\nclient_ids = [\"x\"]\n"),
    )
    .unwrap();
    hup(broker.child.id());
    let mut banned = false;
    for _ in 0..50 {
        if code("x").await == ReasonCode::Banned {
            banned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(banned, "the ban in the reloaded file applies");
    assert_eq!(code("y").await, ReasonCode::Success);
    broker.kill();
}

/// `messs storage verify|checkpoint|compact` on a stopped broker's data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_commands_verify_checkpoint_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "wal");
    let (mut publisher, _) = Client::connect(broker.addr, connect_packet("pub", true, None)).await;
    publisher
        .send(&publish(
            "cli/r",
            b"kept".to_vec(),
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    broker.kill();
    let messs = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_messs"))
            .args(["storage", "--config"])
            .arg(dir.path().join("messs.toml"))
            .args(args)
            .output()
            .unwrap()
    };
    let out = messs(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("retained: 1 records") && text.contains("intact"),
        "{text}"
    );
    let backup = dir.path().join("backup");
    let out = messs(&["checkpoint", backup.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(messs(&["compact"]).status.success());
    // The checkpoint is a data directory of its own, and verifies.
    let out = Command::new(env!("CARGO_BIN_EXE_messs"))
        .args(["storage", "verify", "--data-dir"])
        .arg(&backup)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A directory that is not there is a clear error, not a new empty store.
    let missing = dir.path().join("missing");
    let out = Command::new(env!("CARGO_BIN_EXE_messs"))
        .args(["storage", "verify", "--data-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!missing.exists());
}

/// The data directory and its files are owner-only. Turning encryption on for a store that
/// ran without it: with a key configured a value in clear is refused (`verify` fails, the broker would not trust a planted record), and
/// `messs storage encrypt` seals the store once, after which it verifies and the broker
/// serves the same retained message. The audit head verify prints is accepted back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_encrypt_seals_a_store_that_ran_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), "wal");
    let (mut publisher, _) = Client::connect(broker.addr, connect_packet("pub", true, None)).await;
    publisher
        .send(&publish(
            "enc/r",
            b"sealed-later".to_vec(),
            QosPid::AtLeastOnce(pid(1)),
            true,
        ))
        .await;
    assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    broker.kill();
    // The data directory is the broker user's alone, and so is every file in it (the
    // audit's finding: created with the umask's 0755/0644).
    {
        use std::os::unix::fs::PermissionsExt;
        let data = dir.path().join("data");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        let files: Vec<_> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        assert!(files.len() > 3, "{files:?}");
        for f in files {
            assert_eq!(mode(&f), 0o600, "{}", f.display());
        }
    }
    let config = dir.path().join("messs.toml");
    let key_file = dir.path().join("storage.key");
    std::fs::write(&key_file, format!("1:{}\n", "5a".repeat(32))).unwrap();
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}encryption_key_file = \"{}\"\n", key_file.display()),
    )
    .unwrap();
    let messs = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_messs"))
            .args(["storage", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = messs(&["verify"]);
    assert!(!ok && text.contains("stored in clear"), "{text}");
    let (ok, text) = messs(&["encrypt"]);
    assert!(ok && text.contains("sealed 1 messages"), "{text}");
    let (ok, text) = messs(&["verify"]);
    assert!(ok, "{text}");
    let head = text
        .split("head ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap()
        .to_owned();
    let (ok, text) = messs(&["verify", "--audit-head", &head]);
    assert!(ok, "{text}");
    // A head the store never reached: a rollback.
    let seq: u64 = head.split(':').next().unwrap().parse().unwrap();
    let ahead = format!("{}:{}", seq + 5, head.split(':').nth(1).unwrap());
    let (ok, text) = messs(&["verify", "--audit-head", &ahead]);
    assert!(!ok && text.contains("rolled back"), "{text}");
    // The broker starts on the sealed store (with the key) and serves what it held.
    let broker = Broker::run(&config);
    let (mut sub, _) = Client::connect(broker.addr, connect_packet("sub", true, None)).await;
    sub.subscribe("enc/#", QoS::AtMostOnce).await;
    match sub.recv().await {
        Packet::Publish(p) => assert_eq!(p.payload.as_ref(), b"sealed-later"),
        other => panic!("{other:?}"),
    }
    broker.kill();
    // A new key, and everything re-sealed with it.
    std::fs::write(
        &key_file,
        format!(
            "1:{}
2:{}
",
            "5a".repeat(32),
            "6b".repeat(32)
        ),
    )
    .unwrap();
    let (ok, text) = messs(&["rekey"]);
    assert!(ok && text.contains("sealed 1 messages"), "{text}");
    let (ok, text) = messs(&["verify"]);
    assert!(ok, "{text}");
}

/// The outside audit: a flipped byte in the write-ahead log made the broker start with
/// everything after it gone, silently, and `messs storage verify` said "ok" and deleted the
/// damaged log. Now both refuse and change nothing; `--recover-wal` recovers on request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_wal_stops_start_and_verify_until_recovery_is_asked_for() {
    const RETAINED: usize = 400;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("messs.toml");
    let broker = Broker::start(dir.path(), "wal");
    let (mut publisher, _) = Client::connect(broker.addr, connect_packet("pub", true, None)).await;
    for i in 0..RETAINED {
        publisher
            .send(&publish(
                &format!("wal/{i}"),
                vec![b'x'; 200],
                QosPid::AtLeastOnce(pid(1)),
                true,
            ))
            .await;
        assert!(matches!(publisher.recv().await, Packet::PubAck(_)));
    }
    broker.kill();

    let data = dir.path().join("data");
    let mut logs: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let wal = logs.last().unwrap().clone();
    let mut bytes = std::fs::read(&wal).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&wal, &bytes).unwrap();

    let messs = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_messs"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap()
    };
    let verify = messs(&["storage", "verify"]);
    let said = String::from_utf8_lossy(&verify.stderr).to_string();
    assert!(!verify.status.success(), "verify passed a damaged WAL");
    assert!(
        said.contains("write-ahead log") && said.contains("--recover-wal"),
        "{said}"
    );
    assert_eq!(
        std::fs::read(&wal).unwrap(),
        bytes,
        "verify changed the damaged log"
    );
    let serve = messs(&["serve", "--admin-listen", "off"]);
    let said = String::from_utf8_lossy(&serve.stderr).to_string();
    assert!(!serve.status.success());
    assert!(said.contains("--recover-wal"), "{said}");
    assert_eq!(std::fs::read(&wal).unwrap(), bytes);

    // Asked for: the broker starts with what is before the damage.
    let broker = Broker::run_with(&config, &["--recover-wal"]);
    drop(broker);
    let verify = messs(&["storage", "verify"]);
    let text = String::from_utf8_lossy(&verify.stdout).to_string();
    assert!(verify.status.success(), "{text}");
    let kept: usize = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("retained: "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(kept > 0 && kept < RETAINED, "{kept} retained kept");
    assert!(std::fs::read_dir(&data).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("wal-damaged-")));
}
