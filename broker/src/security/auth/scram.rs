//! SCRAM-SHA-256 (RFC 5802, RFC 7677) for MQTT 5 enhanced authentication: the messages,
//! the server's checks and the verifier kept in the registry. No channel binding (the
//! `-PLUS` variant is not offered, so a client saying `y` is fine and one asking for `p=`
//! is refused). Usernames and passwords are taken as the UTF-8 the client sends (no
//! SASLprep: for ASCII, which is what devices use, it changes nothing).
//!
//! The server never runs PBKDF2 at login — only HMACs and a hash — so a flood of SCRAM
//! logins costs far less than password logins; the client does the iterations.

use std::num::NonZeroU32;

use aws_lc_rs::{constant_time, digest, hmac, pbkdf2, rand};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use messs_storage::registry::ScramCredential;

/// The method name in CONNECT and AUTH.
pub(crate) const METHOD: &str = "SCRAM-SHA-256";

/// Salt bytes for a new credential.
const SALT_LEN: usize = 16;
/// Nonce bytes the server adds (base64 in the message).
const NONCE_LEN: usize = 18;
/// Longest client message accepted (a username is at most 64 KiB in CONNECT anyway).
const MAX_MESSAGE: usize = 4096;

/// Why an exchange failed (for the audit log; the client only sees the reason code).
pub(crate) type Failure = &'static str;

/// A verifier for `password`: what `device add` stores next to the argon2 hash.
pub(crate) fn credential(password: &str, iterations: u32) -> Result<ScramCredential, Failure> {
    let mut salt = vec![0u8; SALT_LEN];
    rand::fill(&mut salt).map_err(|_| "no randomness")?;
    credential_with_salt(password, salt, iterations)
}

fn credential_with_salt(
    password: &str,
    salt: Vec<u8>,
    iterations: u32,
) -> Result<ScramCredential, Failure> {
    let rounds = NonZeroU32::new(iterations).ok_or("zero iterations")?;
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        rounds,
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let client_key = mac(&salted, b"Client Key");
    let server_key = mac(&salted, b"Server Key");
    Ok(ScramCredential {
        iterations,
        salt,
        stored_key: sha256(&client_key),
        server_key,
    })
}

fn mac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// The client's first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ClientFirst {
    /// `n,,` or `y,,`: echoed (base64) in the client's final message.
    gs2_header: String,
    /// The message without the GS2 header: part of what both sides sign.
    bare: String,
    /// The username (`=2C` and `=3D` decoded).
    pub username: String,
    nonce: String,
}

/// Parses `client-first-message` (RFC 5802 §7).
pub(crate) fn parse_client_first(data: &[u8]) -> Result<ClientFirst, Failure> {
    if data.len() > MAX_MESSAGE {
        return Err("client-first-message too long");
    }
    let text = std::str::from_utf8(data).map_err(|_| "client-first-message is not UTF-8")?;
    let (cb, rest) = text.split_once(',').ok_or("no GS2 header")?;
    match cb {
        "n" | "y" => {}
        _ if cb.starts_with("p=") => return Err("channel binding is not offered"),
        _ => return Err("bad GS2 header"),
    }
    let (authzid, bare) = rest.split_once(',').ok_or("no GS2 header")?;
    if !authzid.is_empty() {
        return Err("an authorization identity is not supported");
    }
    if bare.starts_with("m=") {
        return Err("mandatory extension not supported");
    }
    let mut attrs = bare.split(',');
    let username = attrs
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .ok_or("no username")?;
    let nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or("no nonce")?;
    if nonce.is_empty()
        || !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        return Err("bad nonce");
    }
    Ok(ClientFirst {
        gs2_header: format!("{cb},,"),
        bare: bare.to_owned(),
        username: decode_saslname(username)?,
        nonce: nonce.to_owned(),
    })
}

fn decode_saslname(s: &str) -> Result<String, Failure> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err("bad username escape"),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err("empty username");
    }
    Ok(out)
}

/// The server's side of one exchange, between its first message and the client's final.
#[derive(Debug)]
pub(crate) struct Exchange {
    first: ClientFirst,
    server_first: String,
    nonce: String,
    credential: ScramCredential,
}

impl Exchange {
    /// Answers `first` for `credential` (a real one, or a decoy for an unknown user that
    /// no proof matches); the returned `server-first-message` goes in an AUTH packet.
    pub(crate) fn start(first: ClientFirst, credential: ScramCredential) -> Result<Self, Failure> {
        let mut raw = [0u8; NONCE_LEN];
        rand::fill(&mut raw).map_err(|_| "no randomness")?;
        Ok(Self::with_nonce(first, credential, &B64.encode(raw)))
    }

    fn with_nonce(first: ClientFirst, credential: ScramCredential, server_nonce: &str) -> Self {
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        Exchange {
            first,
            server_first,
            nonce,
            credential,
        }
    }

    pub(crate) fn server_first(&self) -> &str {
        &self.server_first
    }

    /// Checks `client-final-message`; on success, the `server-final-message` that proves
    /// the server knew the verifier (sent in CONNACK's Authentication Data).
    pub(crate) fn finish(&self, data: &[u8]) -> Result<String, Failure> {
        if data.len() > MAX_MESSAGE {
            return Err("client-final-message too long");
        }
        let text = std::str::from_utf8(data).map_err(|_| "client-final-message is not UTF-8")?;
        let (without_proof, proof) = text.rsplit_once(",p=").ok_or("no proof")?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or("no channel binding attribute")?;
        if B64.decode(binding).ok().as_deref() != Some(self.first.gs2_header.as_bytes()) {
            return Err("channel binding does not match the first message");
        }
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or("no nonce")?;
        if nonce != self.nonce {
            return Err("nonce does not match");
        }
        let proof = B64.decode(proof).map_err(|_| "proof is not base64")?;
        if proof.len() != 32 {
            return Err("proof is not 32 bytes");
        }
        let auth_message = format!("{},{},{without_proof}", self.first.bare, self.server_first);
        let signature = mac(&self.credential.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        constant_time::verify_slices_are_equal(&sha256(&client_key), &self.credential.stored_key)
            .map_err(|_| "wrong proof")?;
        let server_signature = mac(&self.credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// A credential for a user who has none (unknown, disabled, or no SCRAM verifier): the
/// salt is derived from the name under a process secret, so asking twice gives the same
/// answer as for a real user, and the keys are random, so no proof matches.
pub(crate) fn decoy(
    secret: &hmac::Key,
    tenant: &str,
    username: &str,
    iterations: u32,
) -> ScramCredential {
    let mut ctx = hmac::Context::with_key(secret);
    for part in [
        b"scram-decoy".as_slice(),
        tenant.as_bytes(),
        username.as_bytes(),
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
    let salt = ctx.sign().as_ref()[..SALT_LEN].to_vec();
    let mut keys = [0u8; 64];
    // Without randomness the keys stay zero: still no proof matches (a proof would need a
    // client key whose hash is all zeros).
    let _ = rand::fill(&mut keys);
    let (mut stored_key, mut server_key) = ([0u8; 32], [0u8; 32]);
    stored_key.copy_from_slice(&keys[..32]);
    server_key.copy_from_slice(&keys[32..]);
    ScramCredential {
        iterations,
        salt,
        stored_key,
        server_key,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3: user "user", password "pencil".
    const CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> ScramCredential {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap_or_default();
        credential_with_salt("pencil", salt, 4096).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_rfc_7677_exchange_verifies_and_signs_as_the_rfc_says() {
        let first = parse_client_first(CLIENT_FIRST.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.username, "user");
        let x = Exchange::with_nonce(first, rfc_credential(), SERVER_NONCE);
        assert_eq!(x.server_first(), SERVER_FIRST);
        assert_eq!(
            x.finish(CLIENT_FINAL.as_bytes()),
            Ok(SERVER_FINAL.to_owned())
        );
    }

    #[test]
    fn a_wrong_password_a_tampered_message_or_a_decoy_fails() {
        let first = parse_client_first(CLIENT_FIRST.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap_or_default();
        let other = credential_with_salt("pencil2", salt, 4096).unwrap_or_else(|e| panic!("{e}"));
        let x = Exchange::with_nonce(first.clone(), other, SERVER_NONCE);
        assert_eq!(x.finish(CLIENT_FINAL.as_bytes()), Err("wrong proof"));
        let x = Exchange::with_nonce(first.clone(), rfc_credential(), SERVER_NONCE);
        let replayed_nonce = CLIENT_FINAL.replace("$k0", "$k1");
        assert_eq!(
            x.finish(replayed_nonce.as_bytes()),
            Err("nonce does not match")
        );
        let other_binding = CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert!(x.finish(other_binding.as_bytes()).is_err());
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"process secret");
        let decoy1 = decoy(&key, "acme", "user", 4096);
        let decoy2 = decoy(&key, "acme", "user", 4096);
        assert_eq!(
            decoy1.salt, decoy2.salt,
            "the same salt each time, like a real user"
        );
        let x = Exchange::with_nonce(first, decoy1, SERVER_NONCE);
        assert_eq!(x.finish(CLIENT_FINAL.as_bytes()), Err("wrong proof"));
    }

    #[test]
    fn client_first_messages_are_parsed_strictly() {
        let ok = parse_client_first(b"y,,n=a=2Cb=3Dc@acme,r=abc").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ok.username, "a,b=c@acme");
        for bad in [
            "p=tls-unique,,n=u,r=abc",
            "n,a=admin,n=u,r=abc",
            "n,,n=u",
            "n,,r=abc",
            "n,,n=,r=abc",
            "n,,n=a=2X,r=abc",
            "n,,m=ext,n=u,r=abc",
            "x,,n=u,r=abc",
        ] {
            assert!(parse_client_first(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_client_first(&vec![b'a'; 5000]).is_err());
    }
}
