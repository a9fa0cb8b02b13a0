//! Device passwords: argon2id hashing (for the CLI and the admin plane) and verification on
//! a bounded pool of threads of its own, off the async reactor and off the blocking pool
//! storage reads use. A full queue is an immediate "server busy", never a wait: a flood of
//! CONNECTs with passwords cannot hold the tasks of other clients.
//!
//! Each job looks the device up in the store and verifies the password against its hash;
//! an unknown device, one without a password or a disabled one is verified against a dummy
//! hash of the same cost, so the answer and its timing do not tell which usernames exist.

use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

use argon2::password_hash::PasswordHasher;
use argon2::{Algorithm, Argon2, Params, Version};
use messs_storage::registry::DeviceRecord;
use messs_storage::Store;

use crate::error::BrokerError;

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Iterations.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// PBKDF2 iterations of the SCRAM-SHA-256 verifier made from the same password.
    pub scram_iterations: u32,
}

impl HashParams {
    fn argon2(self) -> Result<Argon2<'static>, BrokerError> {
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, None)
            .map_err(|e| BrokerError::Config(format!("argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

/// Hashes a password into an argon2id PHC string with a random salt.
pub fn hash_password(password: &str, params: HashParams) -> Result<String, BrokerError> {
    let hash = params
        .argon2()?
        .hash_password(password.as_bytes())
        .map_err(|e| BrokerError::Config(format!("hashing a password: {e}")))?;
    Ok(hash.to_string())
}

/// Checks an argon2id PHC string brought from elsewhere (`messs device import`): it must
/// parse, be argon2id, and cost at most 256 MiB, 10 iterations and 8 lanes per check, so an
/// imported hash cannot make each login allocate gigabytes.
pub fn check_hash(phc: &str) -> Result<(), BrokerError> {
    let bad = |why: &str| BrokerError::Registry(format!("not a usable argon2id hash: {why}"));
    let hash = argon2::PasswordHash::new(phc).map_err(|_| bad("it does not parse"))?;
    if hash.algorithm != argon2::ARGON2ID_IDENT {
        return Err(bad("only argon2id is accepted"));
    }
    let params = Params::try_from(&hash).map_err(|_| bad("bad parameters"))?;
    if params.m_cost() > 256 * 1024 || params.t_cost() > 10 || params.p_cost() > 8 {
        return Err(bad("costs more than m=262144, t=10, p=8"));
    }
    Ok(())
}

/// Most argon2 memory a verification thread keeps between verifications (64 MiB); a hash
/// that needs more (an imported one, up to `check_hash`'s bound) gets a buffer of its own.
const KEPT_BLOCKS: usize = 64 * 1024;

thread_local! {
    /// The argon2 working memory of this thread, reused by every verification on it. A
    /// fresh 19 MiB allocation per login made glibc raise its mmap threshold and then keep
    /// the freed blocks: a broker grew by about 11 MB per uncached login (24 GB after
    /// 10,000), found by the reconnect benchmark.
    static MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `password` matches the PHC string `hash` (parameters are the hash's own),
/// compared in constant time.
fn verify(password: &[u8], hash: &str) -> bool {
    let Ok(parsed) = argon2::PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let expected = expected.as_bytes();
    let mut out = [0u8; 64];
    let Some(out) = out.get_mut(..expected.len()) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let computed = if blocks <= KEPT_BLOCKS {
        MEMORY.with_borrow_mut(|memory| {
            if memory.len() < blocks {
                memory.resize(blocks, argon2::Block::default());
            }
            argon.hash_password_into_with_memory(
                password,
                salt.as_ref(),
                out,
                &mut memory[..blocks],
            )
        })
    } else {
        let mut memory = vec![argon2::Block::default(); blocks];
        argon.hash_password_into_with_memory(password, salt.as_ref(), out, &mut memory)
    };
    computed.is_ok() && aws_lc_rs::constant_time::verify_slices_are_equal(out, expected).is_ok()
}

/// What a verification found.
#[derive(Debug)]
pub(crate) enum Verdict {
    /// The password is right and the device is enabled.
    Valid(Box<DeviceRecord>),
    /// Unknown device, no password, disabled, or a wrong password: all look the same.
    Invalid,
    /// The store could not be read: deny (fail closed).
    StoreError,
}

type Job = Box<dyn FnOnce() + Send>;

/// The verification threads and their bounded queue, started at the first verification
/// (a broker that only serves anonymous clients never starts them).
pub(crate) struct PasswordPool {
    threads: usize,
    queue: usize,
    params: HashParams,
    started: std::sync::OnceLock<Result<Started, String>>,
    /// Verifications run (argon2 computations), for tests and metrics.
    pub runs: Arc<std::sync::atomic::AtomicU64>,
}

struct Started {
    jobs: SyncSender<Job>,
    dummy_hash: Arc<str>,
}

impl PasswordPool {
    /// A pool of `threads` workers with room for `queue` waiting jobs.
    pub fn new(threads: usize, queue: usize, params: HashParams) -> Self {
        PasswordPool {
            threads,
            queue,
            params,
            started: std::sync::OnceLock::new(),
            runs: Arc::default(),
        }
    }

    fn started(&self) -> Result<&Started, &str> {
        self.started
            .get_or_init(|| {
                Self::start(self.threads, self.queue, self.params).map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(String::as_str)
    }

    fn start(threads: usize, queue: usize, params: HashParams) -> Result<Started, BrokerError> {
        let dummy_hash: Arc<str> = Arc::from(hash_password("messs-dummy-password", params)?);
        let (tx, rx) = sync_channel::<Job>(queue);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("messs-auth-{i}"))
                .spawn(move || {
                    // Below the connection threads: a login flood must not take CPU time
                    // from connected clients (on Linux, nice applies to this thread).
                    if let Err(e) = rustix::process::nice(10) {
                        tracing::debug!(error = %e, "could not lower the verification threads' priority");
                    }
                    loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                    }
                })
                .map_err(BrokerError::Io)?;
        }
        Ok(Started {
            jobs: tx,
            dummy_hash,
        })
    }

    /// Verifies a device's password; `None` if the queue is full (answer "server busy").
    pub async fn verify(
        &self,
        store: Option<Store>,
        tenant: String,
        username: String,
        password: Vec<u8>,
    ) -> Option<Verdict> {
        let started = match self.started() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = e, "the password verification pool did not start");
                return Some(Verdict::StoreError);
            }
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let dummy = started.dummy_hash.clone();
        let runs = self.runs.clone();
        let job: Job = Box::new(move || {
            if tx.is_closed() {
                // The handshake gave up (connect timeout) while this waited: no work.
                return;
            }
            let found = match store.map(|s| s.device(&tenant, &username)) {
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    tracing::error!(error = %e, "device lookup failed: login denied");
                    let _ = tx.send(Verdict::StoreError);
                    return;
                }
                None => None,
            };
            let usable = found
                .filter(|d| d.enabled)
                .and_then(|d| d.password_hash.clone().map(|h| (d, h)));
            runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let verdict = match usable {
                Some((device, hash)) if verify(&password, &hash) => {
                    Verdict::Valid(Box::new(device))
                }
                Some(_) => Verdict::Invalid,
                None => {
                    // Same cost as a real check; the result is ignored.
                    let _ = verify(&password, &dummy);
                    Verdict::Invalid
                }
            };
            let _ = tx.send(verdict);
        });
        match started.jobs.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => return None,
        }
        // A worker that died would drop the sender: deny.
        Some(rx.await.unwrap_or(Verdict::StoreError))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: HashParams = HashParams {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
        scram_iterations: 4096,
    };

    #[test]
    fn imported_hashes_must_be_argon2id_at_a_bounded_cost() {
        check_hash(&hash_password("pw", CHEAP).unwrap()).unwrap();
        let greedy = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        assert!(check_hash(greedy)
            .unwrap_err()
            .to_string()
            .contains("costs more"));
        let argon2i = "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA";
        assert!(check_hash(argon2i).is_err());
        assert!(check_hash("plaintext").is_err());
    }

    #[test]
    fn hashes_are_argon2id_salted_and_verify() {
        let a = hash_password("pw", CHEAP).unwrap();
        let b = hash_password("pw", CHEAP).unwrap();
        assert!(a.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "salted");
        assert!(verify(b"pw", &a));
        assert!(!verify(b"pW", &a));
        assert!(!verify(b"pw", "not a hash"));
    }
}
