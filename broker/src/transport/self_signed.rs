//! A self-signed server certificate for trying the TLS, WSS and QUIC listeners without
//! making one: `messs serve --listen quic://...` without `--config` uses it. Kept in the
//! data directory, so its fingerprint stays the same across restarts and a client that
//! pinned it keeps working. Never used when a configuration file is given.

use std::io::Write;
use std::path::Path;

use crate::config::{CertIdentity, TlsConfig};
use crate::error::BrokerError;

/// Where the certificate lives, under the data directory.
const DIR: &str = "self-signed";

/// The certificate's settings and its SHA-256 fingerprint (hex, colon-separated, as
/// `openssl x509 -fingerprint -sha256` prints it).
pub struct SelfSigned {
    /// A `[listener.tls]` table naming the certificate and key.
    pub tls: TlsConfig,
    /// SHA-256 of the certificate (DER).
    pub fingerprint: String,
    /// True if it was made now (false: read from an earlier run).
    pub created: bool,
}

/// Reads the self-signed certificate under `data_dir`, or makes one (ECDSA P-256, for
/// `localhost`, `127.0.0.1` and `::1`, valid for 10 years).
pub fn ensure(data_dir: &Path) -> Result<SelfSigned, BrokerError> {
    let dir = data_dir.join(DIR);
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    let created = !(cert_file.exists() && key_file.exists());
    if created {
        make(&dir, &cert_file, &key_file)?;
    }
    let pem = std::fs::read(&cert_file)?;
    let der = crate::transport::tls::parse_pem_certs(&pem)?;
    let first = der
        .first()
        .ok_or_else(|| BrokerError::Config(format!("{}: no certificate", cert_file.display())))?;
    Ok(SelfSigned {
        tls: TlsConfig {
            cert_file,
            key_file,
            allow_tls12: false,
            require_client_cert: false,
            cert_identity: CertIdentity::default(),
        },
        fingerprint: fingerprint(first),
        created,
    })
}

fn make(dir: &Path, cert_file: &Path, key_file: &Path) -> Result<(), BrokerError> {
    let failed =
        |e: rcgen::Error| BrokerError::Config(format!("making a self-signed certificate: {e}"));
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names).map_err(failed)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "messs self-signed");
    params.not_before = rcgen::date_time_ymd(2025, 1, 1);
    params.not_after = rcgen::date_time_ymd(2035, 1, 1);
    let key = rcgen::KeyPair::generate().map_err(failed)?;
    let cert = params.self_signed(&key).map_err(failed)?;
    std::fs::create_dir_all(dir)?;
    write_private(key_file, key.serialize_pem().as_bytes())?;
    std::fs::write(cert_file, cert.pem())?;
    Ok(())
}

/// Writes a file only its owner can read (the key).
fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

fn fingerprint(der: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_reused_with_the_same_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure(dir.path()).unwrap();
        assert!(first.created);
        let again = ensure(dir.path()).unwrap();
        assert!(!again.created);
        assert_eq!(first.fingerprint, again.fingerprint);
        assert_eq!(first.fingerprint.len(), 32 * 3 - 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&first.tls.key_file)
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
        }
        // The pair loads as a listener would load it.
        crate::transport::tls::TlsListener::new(&first.tls, Default::default()).unwrap();
    }
}
