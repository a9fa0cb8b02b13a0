//! TLS for listeners (rustls, aws-lc-rs): TLS 1.3 only unless a listener allows 1.2, the
//! hybrid post-quantum key exchange X25519MLKEM768 offered first, the server certificate
//! re-read on reload (SIGHUP) without touching live connections, and client certificates
//! checked against every tenant's trusted CAs.
//!
//! A client certificate is accepted during the handshake if it chains to a CA some tenant
//! trusts; after the handshake [`ClientCas::login`] finds that tenant again and reads the
//! device's name from the certificate's CN or a SAN, as the listener says.
//!
//! A trust anchor is its subject and public key, not its DER: a second certificate with the
//! same subject and key (a new serial, signed by anyone) verifies exactly the same device
//! certificates. So the registry refuses an anchor whose public key another tenant already
//! trusts ([`anchor_key`]), and the lookup from a certificate to its tenant asks every
//! tenant and fails closed when more than one would take it: which tenant a device lands
//! in never depends on the order tenants were loaded in.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use crate::config::{CertIdentity, TlsConfig};
use crate::error::BrokerError;
use crate::session::TenantId;

/// The crypto provider of every TLS object in the broker: aws-lc-rs, with the hybrid
/// post-quantum group first.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    use aws_lc_rs::kx_group::{SECP256R1, SECP384R1, X25519, X25519MLKEM768};
    let mut p = aws_lc_rs::default_provider();
    p.kx_groups = vec![X25519MLKEM768, X25519, SECP256R1, SECP384R1];
    Arc::new(p)
}

/// Makes [`provider`] the process default, for any library that asks for one (every TLS
/// object of the broker names it explicitly anyway). A second call is a no-op.
pub(crate) fn install_default_provider() {
    let _ = Arc::unwrap_or_clone(provider()).install_default();
}

fn tls_err(what: impl std::fmt::Display) -> BrokerError {
    BrokerError::Config(format!("tls: {what}"))
}

/// Reads a PEM certificate chain and private key into a signing key.
fn load_key(cfg: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, BrokerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| tls_err(format!("{}: {e}", cfg.cert_file.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!(
            "{}: no certificate in it",
            cfg.cert_file.display()
        )));
    }
    // The key's content never reaches an error message.
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file)
        .map_err(|_| tls_err(format!("{}: no usable private key", cfg.key_file.display())))?;
    CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| tls_err(format!("certificate and key do not fit together: {e}")))
}

/// The server certificate, swapped on reload.
#[derive(Debug)]
struct ServerCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// One TLS listener's acceptor and what reloading it needs. A QUIC listener uses the same
/// certificate and client-certificate check, through [`TlsListener::quic_crypto`].
pub(crate) struct TlsListener {
    pub acceptor: tokio_rustls::TlsAcceptor,
    cert: Arc<ServerCert>,
    verifier: Arc<AnyTenant>,
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
}

impl TlsListener {
    pub fn new(config: &TlsConfig, cas: Arc<ClientCas>) -> Result<Self, BrokerError> {
        let provider = provider();
        let cert = Arc::new(ServerCert {
            current: RwLock::new(Arc::new(load_key(config, &provider)?)),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = if config.allow_tls12 {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let verifier = Arc::new(AnyTenant {
            cas,
            mandatory: config.require_client_cert,
            algorithms: provider.signature_verification_algorithms,
        });
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier.clone())
            .with_cert_resolver(cert.clone());
        Ok(TlsListener {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)),
            cert,
            verifier,
            config: config.clone(),
            provider,
        })
    }

    /// The TLS side of a QUIC listener: TLS 1.3 (QUIC has no other), ALPN `mqtt`, the same
    /// certificate (reloads included) and client-certificate check. Early data is accepted
    /// only when `early_data` is set; QUIC allows no size but "any" then.
    pub fn quic_crypto(&self, early_data: bool) -> Result<rustls::ServerConfig, BrokerError> {
        let mut server = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(self.verifier.clone())
            .with_cert_resolver(self.cert.clone());
        server.alpn_protocols = vec![b"mqtt".to_vec()];
        server.max_early_data_size = if early_data { u32::MAX } else { 0 };
        Ok(server)
    }

    /// Re-reads the certificate and key; on error the old ones stay in use.
    pub fn reload(&self) -> Result<(), BrokerError> {
        let key = load_key(&self.config, &self.provider)?;
        *self
            .cert
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// Which part of a client certificate names the device.
    pub fn identity(&self) -> CertIdentity {
        self.config.cert_identity
    }
}

/// One tenant's CAs, as a verifier.
struct TenantCas {
    tenant: TenantId,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// Every tenant's trusted client CAs.
#[derive(Default)]
pub(crate) struct ClientCas {
    tenants: RwLock<Arc<Vec<TenantCas>>>,
}

/// A device identified by its certificate.
#[derive(Debug, Clone)]
pub(crate) struct CertLogin {
    pub tenant: TenantId,
    pub name: String,
    /// SHA-256 of the end-entity certificate (checked against revocations).
    pub fingerprint: [u8; 32],
}

impl ClientCas {
    /// Replaces one tenant's CAs (DER); none: the tenant trusts no client certificate.
    pub fn set(&self, tenant: &TenantId, cas: &[Vec<u8>]) -> Result<(), BrokerError> {
        let verifier = if cas.is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            for der in cas {
                roots
                    .add(CertificateDer::from(der.clone()))
                    .map_err(|e| tls_err(format!("tenant {tenant}: a trusted CA: {e}")))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| tls_err(format!("tenant {tenant}: {e}")))?;
            Some(v)
        };
        let mut guard = self.tenants.write().unwrap_or_else(PoisonError::into_inner);
        let mut next: Vec<TenantCas> = guard
            .iter()
            .filter(|t| t.tenant != *tenant)
            .map(|t| TenantCas {
                tenant: t.tenant.clone(),
                verifier: t.verifier.clone(),
            })
            .collect();
        if let Some(verifier) = verifier {
            next.push(TenantCas {
                tenant: tenant.clone(),
                verifier,
            });
        }
        // In tenant order, so nothing depends on the order changes came in.
        next.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        *guard = Arc::new(next);
        Ok(())
    }

    fn snapshot(&self) -> Arc<Vec<TenantCas>> {
        self.tenants
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The tenants whose CAs verify the chain, in tenant order.
    fn trusting<'a>(
        tenants: &'a [TenantCas],
        end_entity: &'a CertificateDer<'a>,
        intermediates: &'a [CertificateDer<'a>],
        now: UnixTime,
    ) -> impl Iterator<Item = &'a TenantCas> + 'a {
        tenants.iter().filter(move |t| {
            t.verifier
                .verify_client_cert(end_entity, intermediates, now)
                .is_ok()
        })
    }

    /// Whether some tenant's CAs verify the chain (the handshake's check; which tenant is
    /// settled by [`ClientCas::login`]).
    fn verifies_for_any(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> bool {
        Self::trusting(&self.snapshot(), end_entity, intermediates, now)
            .next()
            .is_some()
    }

    /// The one tenant whose CAs verify the chain. Every tenant is asked: if two would take
    /// it (anchors planted before the registry refused them, or a tenant trusting another
    /// tenant's intermediate CA), the login fails rather than pick one.
    fn tenant_of(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<TenantId, &'static str> {
        let snapshot = self.snapshot();
        let mut trusting = Self::trusting(&snapshot, end_entity, intermediates, now);
        match (trusting.next(), trusting.next()) {
            (Some(t), None) => Ok(t.tenant.clone()),
            (None, _) => Err("no tenant trusts the certificate"),
            (Some(_), Some(_)) => Err(
                "more than one tenant trusts the certificate's issuer: refused until only one does",
            ),
        }
    }

    /// The tenant and device name of a verified peer chain; an error says why not.
    pub fn login(
        &self,
        chain: &[CertificateDer<'_>],
        identity: CertIdentity,
    ) -> Result<CertLogin, String> {
        let (end_entity, intermediates) = chain.split_first().ok_or("empty chain")?;
        let tenant = self.tenant_of(end_entity, intermediates, UnixTime::now())?;
        let name = cert_name(end_entity, identity)?;
        Ok(CertLogin {
            tenant,
            name,
            fingerprint: messs_storage::registry::cert_fingerprint(end_entity),
        })
    }
}

/// What identifies a trust anchor: the SHA-256 of its SubjectPublicKeyInfo. Two CA
/// certificates with the same key verify the same signatures whatever else differs, so one
/// key may be trusted by one tenant only.
///
/// The key is taken as its bit string alone (not the algorithm parameters, which can be
/// written more than one way), and an elliptic-curve key must be an uncompressed point: a
/// compressed point is the same key written differently, and an outside audit used one to
/// slip another tenant's key past this check.
pub fn anchor_key(der: &[u8]) -> Result<[u8; 32], String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
    let spki = cert.public_key();
    let ec = spki.algorithm.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY;
    let key = canonical_key(ec, spki.subject_public_key.data.as_ref())?;
    let d = ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, key);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    Ok(out)
}

/// A CA's key bytes in the one form anchors are compared in (see [`anchor_key`]).
fn canonical_key(ec: bool, key: &[u8]) -> Result<&[u8], String> {
    if ec && key.first() != Some(&0x04) {
        return Err("an elliptic-curve CA key must be an uncompressed point".into());
    }
    Ok(key)
}

/// The device name in a certificate.
fn cert_name(der: &[u8], identity: CertIdentity) -> Result<String, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("certificate: {e}"))?;
    let name = match identity {
        CertIdentity::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        other => {
            let san = cert
                .subject_alternative_name()
                .map_err(|e| format!("subject alternative names: {e}"))?;
            san.and_then(|ext| {
                ext.value.general_names.iter().find_map(|n| {
                    use x509_parser::extensions::GeneralName as G;
                    match (other, n) {
                        (CertIdentity::SanDns, G::DNSName(s))
                        | (CertIdentity::SanEmail, G::RFC822Name(s))
                        | (CertIdentity::SanUri, G::URI(s)) => Some((*s).to_owned()),
                        _ => None,
                    }
                })
            })
        }
    };
    name.filter(|n| !n.is_empty() && !n.chars().any(char::is_control))
        .ok_or_else(|| format!("the certificate has no usable {identity:?} name"))
}

/// The handshake's client-certificate check: accepted if any tenant's CAs verify it.
struct AnyTenant {
    cas: Arc<ClientCas>,
    mandatory: bool,
    algorithms: WebPkiSupportedAlgorithms,
}

impl std::fmt::Debug for AnyTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnyTenant")
            .field("mandatory", &self.mandatory)
            .finish()
    }
}

impl ClientCertVerifier for AnyTenant {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: they would list every tenant's CAs to anyone who connects.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if self.cas.verifies_for_any(end_entity, intermediates, now) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Reads the CA certificates (DER) of a PEM file, for `messs ca add`.
pub fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, BrokerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| tls_err(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(tls_err(format!("{}: no certificate in it", path.display())));
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// The certificates (DER) of PEM text, for the admin plane's uploads.
pub fn parse_pem_certs(pem: &[u8]) -> Result<Vec<Vec<u8>>, BrokerError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| tls_err(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_err("no certificate in the PEM text"));
    }
    Ok(certs.into_iter().map(|c| c.to_vec()).collect())
}

/// A TLS 1.3-only acceptor (no client certificates) for the admin plane's HTTPS, from a
/// PEM certificate chain and key. The certificate is read once: changing it takes a
/// restart of the admin plane.
pub fn https_acceptor(
    cert_file: &Path,
    key_file: &Path,
) -> Result<tokio_rustls::TlsAcceptor, BrokerError> {
    let provider = provider();
    let key = load_key(
        &TlsConfig {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            allow_tls12: false,
            require_client_cert: false,
            cert_identity: CertIdentity::default(),
        },
        &provider,
    )?;
    let cert = Arc::new(ServerCert {
        current: RwLock::new(Arc::new(key)),
    });
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

#[cfg(test)]
mod anchor_tests {
    use super::canonical_key;

    #[test]
    fn a_compressed_ec_point_is_refused_as_a_ca_key() {
        let x = [7u8; 32];
        let compressed: Vec<u8> = [&[0x02][..], &x].concat();
        assert!(canonical_key(true, &compressed).is_err());
        let uncompressed: Vec<u8> = [&[0x04][..], &x, &x].concat();
        assert_eq!(canonical_key(true, &uncompressed), Ok(&uncompressed[..]));
        // Other key types are taken as they are (RSA keys are DER, Ed25519 fixed bytes).
        assert!(canonical_key(false, &compressed).is_ok());
    }
}
