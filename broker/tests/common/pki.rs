//! Test certificates (rcgen): a server CA and its server certificate for `localhost` and
//! 127.0.0.1, two device CAs (tenants `acme` and `globex`), and rustls client configs that
//! trust the server CA, for the TLS, WSS and QUIC tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// A CA that can issue certificates.
pub struct Ca {
    pub cert: rcgen::Certificate,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca {
            cert,
            name: name.to_owned(),
            issuer: Issuer::new(p, key),
        }
    }

    /// The attack on trust anchors: a CA certificate with this CA's subject and public key
    /// but a new serial, signed by `signer` (who never had this CA's private key). A
    /// verifier that takes it as an anchor accepts every certificate this CA issued.
    pub fn forged_copy(&self, signer: &Ca) -> Vec<u8> {
        self.forged_copy_with(self.issuer.key(), signer)
    }

    /// As [`Ca::forged_copy`], with this CA's P-256 key written as a compressed point
    /// (SEC 1: 0x02 or 0x03, then X): the same key in other bytes, which the outside
    /// review used to get past a check that hashed the key's bytes.
    pub fn forged_compressed_copy(&self, signer: &Ca) -> Vec<u8> {
        struct Compressed(Vec<u8>);
        impl rcgen::PublicKeyData for Compressed {
            fn der_bytes(&self) -> &[u8] {
                &self.0
            }
            fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
                &rcgen::PKCS_ECDSA_P256_SHA256
            }
        }
        let raw = rcgen::PublicKeyData::der_bytes(self.issuer.key()).to_vec();
        assert_eq!(
            (raw.len(), raw[0]),
            (65, 0x04),
            "an uncompressed P-256 point"
        );
        let mut point = vec![0x02 | (raw[64] & 1)];
        point.extend_from_slice(&raw[1..33]);
        self.forged_copy_with(&Compressed(point), signer)
    }

    fn forged_copy_with(&self, key: &impl rcgen::PublicKeyData, signer: &Ca) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, self.name.as_str());
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x42, 0x17, 0x99]));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.signed_by(key, &signer.issuer).unwrap().der().to_vec()
    }

    /// A leaf: (certificate, key).
    pub fn issue(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        server: bool,
    ) -> (rcgen::Certificate, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = sans;
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        (p.signed_by(&key, &self.issuer).unwrap(), key)
    }
}

pub struct Pki {
    pub server_ca: Ca,
    pub acme: Ca,
    pub globex: Ca,
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let pki = Pki {
            server_ca: Ca::new("messs test server CA"),
            acme: Ca::new("acme devices"),
            globex: Ca::new("globex devices"),
            dir: tempfile::tempdir().unwrap(),
        };
        pki.write_server_cert("localhost");
        pki
    }

    /// (Re)writes the server's certificate for `name` and returns its DER.
    pub fn write_server_cert(&self, name: &str) -> Vec<u8> {
        let (cert, key) = self.server_ca.issue(
            name,
            vec![
                SanType::DnsName(name.try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            true,
        );
        std::fs::write(self.dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(self.dir.path().join("server.key"), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    pub fn tls_config(&self) -> messs_broker::TlsConfig {
        messs_broker::TlsConfig {
            cert_file: self.dir.path().join("server.pem"),
            key_file: self.dir.path().join("server.key"),
            allow_tls12: false,
            require_client_cert: false,
            cert_identity: messs_broker::CertIdentity::Cn,
        }
    }

    /// A TLS connector that trusts the server CA, presenting `identity` if given.
    pub fn client(
        &self,
        identity: Option<&(rcgen::Certificate, KeyPair)>,
        tls12_only: bool,
    ) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(Arc::new(self.client_config(identity, tls12_only)))
    }

    /// The client side's rustls settings (QUIC adds its ALPN to them).
    pub fn client_config(
        &self,
        identity: Option<&(rcgen::Certificate, KeyPair)>,
        tls12_only: bool,
    ) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.server_ca.cert.der().clone()).unwrap();
        // A client that offers the hybrid post-quantum group first (as browsers do).
        let mut provider = rustls::crypto::aws_lc_rs::default_provider();
        use rustls::crypto::aws_lc_rs::kx_group::{X25519, X25519MLKEM768};
        provider.kx_groups = vec![X25519MLKEM768, X25519];
        let provider = Arc::new(provider);
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config
    }
}
