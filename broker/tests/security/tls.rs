//! TLS listeners and client certificates: post-quantum key exchange, certificate logins,
//! trust anchors, revocation, reload, and the bans and registry checks on them.

use super::*;
use crate::pki::{Ca, Pki};
use rustls::pki_types::ServerName;

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_open(
    addr: std::net::SocketAddr,
    c: &tokio_rustls::TlsConnector,
) -> std::io::Result<Tls> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    c.connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// Whether a client gets as far as a CONNACK (false if the TLS handshake, the CONNECT
/// write or the read fails, or the connection closes first).
async fn gets_connack(addr: std::net::SocketAddr, c: &tokio_rustls::TlsConnector) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tls_open(addr, c).await else {
        return false;
    };
    let mut out = bytes::BytesMut::new();
    let connect = connect_packet(Protocol::V5, "probe", true);
    messs_codec::encode(&Packet::Connect(Box::new(connect)), Protocol::V5, &mut out).unwrap();
    if s.write_all(&out).await.is_err() {
        return false;
    }
    let mut buf = bytes::BytesMut::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            let limits = messs_codec::Limits::default();
            if let Ok(Some(p)) = messs_codec::decode(&mut buf, Protocol::V5, &limits) {
                return matches!(p, Packet::ConnAck(_));
            }
            match s.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    })
    .await;
    read.unwrap_or(false)
}

/// A TLS listener (tenant from the username or certificate), deny by default.
async fn start_tls(pki: &Pki, adjust: impl FnOnce(&mut Config)) -> TestBroker {
    let tls = pki.tls_config();
    let acme_ca = pki.acme.cert.der().to_vec();
    let globex_ca = pki.globex.cert.der().to_vec();
    let broker = start(
        move |c| {
            c.listeners[0].transport = messs_broker::Transport::Tls;
            c.listeners[0].tls = Some(tls);
            adjust(c);
        },
        vec![rule(true, AclAction::Both, "devices/%u/#")],
    )
    .await;
    broker
        .broker
        .registry("test", move |r| {
            r.add_ca("acme", &acme_ca)?;
            r.add_ca("globex", &globex_ca)?;
            Ok(())
        })
        .await
        .unwrap();
    broker
}

#[tokio::test]
async fn tls_13_with_post_quantum_key_exchange_and_password_login() {
    let pki = Pki::new();
    let broker = start_tls(&pki, |_| {}).await;
    let stream = tls_open(broker.addr, &pki.client(None, false))
        .await
        .unwrap();
    let (_, conn) = stream.get_ref();
    assert_eq!(
        conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        conn.negotiated_key_exchange_group().map(|g| g.name()),
        Some(rustls::NamedGroup::X25519MLKEM768),
        "the hybrid post-quantum group is accepted"
    );
    let (mut c, ack) = Raw::over(Box::new(stream))
        .connect(login(
            Protocol::V5,
            "pw",
            Some("sensor1@acme"),
            "acme-password-1",
        ))
        .await;
    assert_eq!(ack.code, ReasonCode::Success);
    c.subscribe("devices/sensor1/#", QoS::AtLeastOnce).await;
    c.roundtrip("devices/sensor1/x").await;
    // TLS 1.2 is refused unless the listener allows it.
    assert!(tls_open(broker.addr, &pki.client(None, true))
        .await
        .is_err());
    broker.stop().await;
    // A socket that never finishes the TLS handshake is closed at the connect timeout
    // (1 s on this broker).
    let broker = start_tls(&pki, |c| c.limits.connect_timeout_secs = 1).await;
    let mut idle = tokio::net::TcpStream::connect(broker.addr).await.unwrap();
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        tokio::io::AsyncReadExt::read(&mut idle, &mut buf).await
    })
    .await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_client_certificate_logs_in_to_the_tenant_of_its_ca() {
    let pki = Pki::new();
    let broker = start_tls(&pki, |_| {}).await;
    let acme_meter = pki.acme.issue("meter-7", vec![], false);
    let globex_meter = pki.globex.issue("meter-7", vec![], false);
    let revoked = pki.acme.issue("meter-8", vec![], false);
    let stranger = Ca::new("not trusted").issue("meter-7", vec![], false);
    let revoked_der = revoked.0.der().to_vec();
    broker
        .broker
        .registry("test", move |r| {
            r.add_device("acme", "meter-7", None, None, &[])?;
            r.add_device("acme", "meter-8", None, None, &[])?;
            r.add_device("globex", "meter-7", None, None, &[])?;
            r.revoke_cert("acme", &revoked_der).map(|_| ())
        })
        .await
        .unwrap();

    // Same name, two tenants: each lands in its CA's tenant. The username sent (if any)
    // is ignored: the certificate is the credential.
    let s = tls_open(broker.addr, &pki.client(Some(&acme_meter), false))
        .await
        .unwrap();
    let mut c = connect_packet(Protocol::V5, "m7", true);
    c.username = Some("someone@globex".into());
    let (mut acme_c, ack) = Raw::over(Box::new(s)).connect(c).await;
    assert_eq!(ack.code, ReasonCode::Success);
    acme_c
        .subscribe("devices/meter-7/#", QoS::AtLeastOnce)
        .await;
    let s = tls_open(broker.addr, &pki.client(Some(&globex_meter), false))
        .await
        .unwrap();
    let (mut globex_c, ack) = Raw::over(Box::new(s))
        .connect(connect_packet(Protocol::V3_1_1, "m7", true))
        .await;
    assert_eq!(ack.code, ReasonCode::Success);
    globex_c
        .publish(publish(
            "devices/meter-7/x",
            b"globex",
            QosPid::AtLeastOnce(pid(1)),
            false,
        ))
        .await;
    acme_c.expect_silence().await;
    // The certificate's name is not a password device.
    let s = tls_open(broker.addr, &pki.client(None, false))
        .await
        .unwrap();
    let (_pw, ack) = Raw::over(Box::new(s))
        .connect(login(Protocol::V5, "p", Some("meter-7@acme"), "x"))
        .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    // The certificate client works in acme (its ACL: devices/%u/#, %u = meter-7).
    acme_c.roundtrip("devices/meter-7/y").await;

    // Revoked: refused at CONNECT, both protocol levels.
    for protocol in [Protocol::V5, Protocol::V3_1_1] {
        let s = tls_open(broker.addr, &pki.client(Some(&revoked), false))
            .await
            .unwrap();
        let (_c, ack) = Raw::over(Box::new(s))
            .connect(connect_packet(protocol, "m8", true))
            .await;
        assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword, "{protocol:?}");
    }
    // A CA no tenant trusts: the TLS handshake itself fails (TLS 1.3 client auth: the
    // client learns at its first read), and no CONNACK ever comes.
    assert!(!gets_connack(broker.addr, &pki.client(Some(&stranger), false)).await);
    // Disabling a device named by certificates refuses it too.
    broker
        .broker
        .registry("test", |r| r.set_device_enabled("acme", "meter-7", false))
        .await
        .unwrap();
    acme_c
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    let s = tls_open(broker.addr, &pki.client(Some(&acme_meter), false))
        .await
        .unwrap();
    let (_c, ack) = Raw::over(Box::new(s))
        .connect(connect_packet(Protocol::V5, "m7", true))
        .await;
    assert_eq!(ack.code, ReasonCode::BadUserNameOrPassword);
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(&audit, "client.connect", "meter-7@acme client \"m7\""));
    assert!(has(
        &audit,
        "client.connect",
        "meter-7@globex client \"m7\""
    ));
    assert!(has(&audit, "auth.failure", "certificate revoked"));
    assert!(has(&audit, "cert.revoke", "tenant \"acme\""));
}

#[tokio::test]
async fn a_reload_serves_the_new_certificate_and_keeps_live_connections() {
    let pki = Pki::new();
    let broker = start_tls(&pki, |c| {
        c.listeners[0].tls.as_mut().unwrap().require_client_cert = true
    })
    .await;
    broker
        .broker
        .registry("test", |r| r.add_device("acme", "meter-7", None, None, &[]))
        .await
        .unwrap();
    let meter = pki.acme.issue("meter-7", vec![], false);
    let s = tls_open(broker.addr, &pki.client(Some(&meter), false))
        .await
        .unwrap();
    let first = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut live, ack) = Raw::over(Box::new(s))
        .connect(connect_packet(Protocol::V5, "m7", true))
        .await;
    assert_eq!(ack.code, ReasonCode::Success);
    live.subscribe("devices/meter-7/#", QoS::AtLeastOnce).await;
    // Without a certificate: refused in the handshake on this listener.
    assert!(!gets_connack(broker.addr, &pki.client(None, false)).await);

    let new_der = pki.write_server_cert("localhost");
    assert_eq!(broker.broker.reload_tls().unwrap(), 1);
    let s = tls_open(broker.addr, &pki.client(Some(&meter), false))
        .await
        .unwrap();
    let second = s.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_ne!(first, second);
    assert_eq!(second, new_der);
    live.roundtrip("devices/meter-7/still-here").await;
    // A broken file keeps the old certificate.
    std::fs::write(pki.dir.path().join("server.key"), "not a key").unwrap();
    assert!(broker.broker.reload_tls().is_err());
    let s = tls_open(broker.addr, &pki.client(Some(&meter), false))
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.peer_certificates().unwrap()[0].to_vec(),
        new_der
    );
    broker.stop().await;
}

/// Connects over TLS with `identity` and returns the CONNACK's code (`None`: no
/// CONNACK came).
async fn cert_login(
    broker: &TestBroker,
    pki: &Pki,
    identity: &(rcgen::Certificate, rcgen::KeyPair),
    client_id: &str,
) -> Option<(Raw, ReasonCode)> {
    let s = tls_open(broker.addr, &pki.client(Some(identity), false))
        .await
        .ok()?;
    let (raw, ack) = Raw::over(Box::new(s))
        .try_connect(connect_packet(Protocol::V5, client_id, true))
        .await?;
    Some((raw, ack.code))
}

/// The audit's first high finding: globex's admin uploads a copy of acme's public
/// device CA (same subject and key, a new serial, signed by globex's own key). The
/// registry refused only an identical DER, and the certificate-to-tenant lookup took
/// the first tenant of a list that reordered itself, so after acme's next registry
/// change acme's devices logged in to globex and received its commands.
#[tokio::test]
async fn a_copy_of_another_tenants_ca_is_refused_and_never_captures_its_devices() {
    let pki = Pki::new();
    let broker = start_tls(&pki, |_| {}).await;
    let forged = pki.acme.forged_copy(&pki.globex);
    assert_ne!(forged, pki.acme.cert.der().to_vec(), "a different DER");
    let meter = pki.acme.issue("meter-7", vec![], false);
    let f = forged.clone();
    let err = broker
        .broker
        .registry("globex-admin", move |r| {
            r.add_device("acme", "meter-7", None, None, &[])?;
            // The attacker registers the same name in its own tenant.
            r.add_device("globex", "meter-7", None, None, &[])?;
            r.add_ca("globex", &f).map(|_| ())
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("another tenant already trusts"), "{err}");
    assert!(!err.contains("acme"), "the refusal names no tenant: {err}");
    // The same key written as a compressed point (the outside review's way past the
    // first fix): refused before it can be compared at all.
    let compressed = pki.acme.forged_compressed_copy(&pki.globex);
    let c = compressed.clone();
    let err = broker
        .broker
        .registry("globex-admin", move |r| r.add_ca("globex", &c).map(|_| ()))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("uncompressed point"), "{err}");
    // The identical DER is refused the same way.
    let acme_der = pki.acme.cert.der().to_vec();
    assert!(broker
        .broker
        .registry("globex-admin", move |r| r
            .add_ca("globex", &acme_der)
            .map(|_| ()))
        .await
        .is_err());
    // acme changes its registry (what reordered the old list): its device still lands
    // in acme.
    broker
        .broker
        .registry("acme-admin", |r| {
            r.add_device("acme", "other", None, None, &[])
        })
        .await
        .unwrap();
    let (mut acme_c, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
    assert_eq!(code, ReasonCode::Success);
    acme_c
        .subscribe("devices/meter-7/#", QoS::AtLeastOnce)
        .await;
    acme_c.roundtrip("devices/meter-7/in-acme").await;
    acme_c.disconnect().await;
    let data = broker.data.clone();
    broker.stop().await;

    // A store that holds such a copy already (planted before this fix, or written
    // around the registry): a certificate two tenants would take logs in to neither,
    // whichever order the tenants load in.
    {
        let store = messs_broker::open_store(&messs_broker::StorageConfig {
            data_dir: data.path().to_path_buf(),
            ..Default::default()
        })
        .unwrap();
        store.add_ca("globex", &forged).unwrap();
        store.add_ca("globex", &compressed).unwrap();
    }
    let tls = pki.tls_config();
    let broker = TestBroker::start_in(data.clone(), move |c| {
        secured(c);
        c.listeners[0].transport = messs_broker::Transport::Tls;
        c.listeners[0].tls = Some(tls);
    })
    .await;
    for round in 0..2 {
        if let Some((_c, code)) = cert_login(&broker, &pki, &meter, "m7").await {
            assert_ne!(code, ReasonCode::Success, "round {round}: captured");
        }
        // Each tenant's CAs reloaded, in both orders.
        let order = if round == 0 {
            ["globex", "acme"]
        } else {
            ["acme", "globex"]
        };
        broker
            .broker
            .registry("test", move |r| {
                for t in order {
                    r.add_rule(t, rule(true, AclAction::Both, "x/#"), None)?;
                }
                Ok(())
            })
            .await
            .unwrap();
    }
    // globex's own devices are not affected.
    let globex_meter = pki.globex.issue("meter-7", vec![], false);
    let (_g, code) = cert_login(&broker, &pki, &globex_meter, "g7")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::Success);
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(&audit, "ca.refused", "tenant \"globex\""));
    assert!(has(&audit, "auth.failure", "more than one tenant trusts"));
    assert!(!has(
        &audit,
        "client.connect",
        "meter-7@globex client \"m7\""
    ));
}

/// A certificate logs in only as a device that exists and is enabled: removing the
/// device keeps it out even though its certificate still verifies. A tenant may turn
/// on auto-registration instead, and each registration is audited.
#[tokio::test]
async fn a_removed_device_cannot_log_back_in_with_its_certificate() {
    let pki = Pki::new();
    let broker = start_tls(&pki, |_| {}).await;
    broker
        .broker
        .registry("test", |r| r.add_device("acme", "meter-7", None, None, &[]))
        .await
        .unwrap();
    let meter = pki.acme.issue("meter-7", vec![], false);
    let (mut live, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
    assert_eq!(code, ReasonCode::Success);
    broker
        .broker
        .registry("test", |r| r.remove_device("acme", "meter-7").map(|_| ()))
        .await
        .unwrap();
    live.expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    let (_c, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
    assert_eq!(code, ReasonCode::BadUserNameOrPassword, "removed device");
    // A name that was never a device: refused too, until the tenant opts in.
    let new_meter = pki.acme.issue("meter-9", vec![], false);
    let (_c, code) = cert_login(&broker, &pki, &new_meter, "m9").await.unwrap();
    assert_eq!(code, ReasonCode::BadUserNameOrPassword, "unknown device");
    broker
        .broker
        .registry("acme-admin", |r| r.set_cert_auto_register("acme", true))
        .await
        .unwrap();
    let (mut c, code) = cert_login(&broker, &pki, &new_meter, "m9").await.unwrap();
    assert_eq!(code, ReasonCode::Success, "auto-registered");
    c.subscribe("devices/meter-9/#", QoS::AtLeastOnce).await;
    c.roundtrip("devices/meter-9/x").await;
    let registered = broker
        .broker
        .registry("test", |r| r.device("acme", "meter-9"))
        .await
        .unwrap();
    assert!(registered.is_some_and(|d| d.enabled && d.password_hash.is_none()));
    // globex did not opt in: its unknown names stay out.
    let stranger = pki.globex.issue("meter-9", vec![], false);
    let (_c, code) = cert_login(&broker, &pki, &stranger, "g9").await.unwrap();
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(
        &audit,
        "auth.failure",
        "meter-7@acme from 127.0.0.1 (certificate): no such device"
    ));
    assert!(has(
        &audit,
        "tenant.cert_auto_register",
        "tenant \"acme\": on"
    ));
    assert!(has(
        &audit,
        "device.auto_register",
        "device \"meter-9\" in tenant \"acme\""
    ));
}

/// `ca remove` (and `DELETE .../cas/{fingerprint}`): the answer SECURITY.md gives to a
/// leaked or wrongly trusted CA. Its devices' live connections are closed and their next
/// logins refused; the removal is audited; other tenants' devices are untouched.
#[tokio::test]
async fn a_removed_ca_logs_none_of_its_devices_in() {
    let pki = Pki::new();
    let broker = start_tls(&pki, |_| {}).await;
    broker
        .broker
        .registry("test", |r| {
            r.add_device("acme", "meter-7", None, None, &[])?;
            r.add_device("acme", "meter-9", None, None, &[])?;
            r.add_device("globex", "meter-8", None, None, &[])
        })
        .await
        .unwrap();
    let meter = pki.acme.issue("meter-7", vec![], false);
    let (mut live, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
    assert_eq!(code, ReasonCode::Success);
    // A revoked certificate's live connection is closed too (with the tenant's other
    // certificate logins, which log straight back in).
    let stolen = pki.acme.issue("meter-9", vec![], false);
    let (mut thief, code) = cert_login(&broker, &pki, &stolen, "m9").await.unwrap();
    assert_eq!(code, ReasonCode::Success);
    let stolen_der = stolen.0.der().to_vec();
    broker
        .broker
        .registry("acme-admin", move |r| {
            r.revoke_cert("acme", &stolen_der).map(|_| ())
        })
        .await
        .unwrap();
    thief
        .expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    live.expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    let (_c, code) = cert_login(&broker, &pki, &stolen, "m9").await.unwrap();
    assert_eq!(code, ReasonCode::BadUserNameOrPassword, "revoked");
    let (mut live, code) = cert_login(&broker, &pki, &meter, "m7").await.unwrap();
    assert_eq!(code, ReasonCode::Success, "not revoked: back in");
    let globex_meter = pki.globex.issue("meter-8", vec![], false);
    let (mut bystander, code) = cert_login(&broker, &pki, &globex_meter, "g8")
        .await
        .unwrap();
    assert_eq!(code, ReasonCode::Success);
    let fp = messs_broker::storage::registry::cert_fingerprint(pki.acme.cert.der());
    // Not globex's to remove; then acme's own admin removes it, once.
    let removed = |tenant: &'static str| {
        let b = &broker;
        async move {
            b.broker
                .registry("admin", move |r| r.remove_ca(tenant, &fp))
                .await
                .unwrap()
        }
    };
    assert!(!removed("globex").await);
    assert!(removed("acme").await);
    live.expect_disconnect(ReasonCode::AdministrativeAction)
        .await;
    assert!(!removed("acme").await, "already gone");
    if let Some((_c, code)) = cert_login(&broker, &pki, &meter, "m7").await {
        assert_ne!(code, ReasonCode::Success, "a removed CA still logs in");
    }
    bystander
        .subscribe("devices/meter-8/#", QoS::AtLeastOnce)
        .await;
    bystander.roundtrip("devices/meter-8/still-here").await;
    let data = broker.data.clone();
    broker.stop().await;
    let audit = audit(&data);
    assert!(has(&audit, "ca.remove", "tenant \"acme\": CA "));
    assert_eq!(
        audit.iter().filter(|(a, _)| a == "ca.remove").count(),
        1,
        "only the removal that happened"
    );
}

/// The operator's username ban applies to the identity authentication settles on: a
/// certificate login sends no User Name, and once slipped past a ban on `NAME@TENANT`.
#[tokio::test]
async fn a_banned_username_stays_out_when_it_logs_in_with_a_certificate() {
    let pki = Pki::new();
    let broker = start_tls(&pki, |c| c.bans.usernames = vec!["meter-7@acme".into()]).await;
    broker
        .broker
        .registry("test", |r| {
            r.add_device("acme", "meter-7", None, None, &[])?;
            r.add_device("acme", "meter-8", None, None, &[])
        })
        .await
        .unwrap();
    let banned = pki.acme.issue("meter-7", vec![], false);
    let (_c, code) = cert_login(&broker, &pki, &banned, "m7").await.unwrap();
    assert_eq!(code, ReasonCode::Banned);
    let other = pki.acme.issue("meter-8", vec![], false);
    let (_c, code) = cert_login(&broker, &pki, &other, "m8").await.unwrap();
    assert_eq!(code, ReasonCode::Success);
    broker.stop().await;
}
