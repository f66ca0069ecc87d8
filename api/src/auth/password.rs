//! Password hashing with argon2id at OWASP's parameters (m = 19 MiB, t = 2,
//! p = 1). Each hash takes tens of milliseconds of CPU, so it runs on the
//! blocking pool behind a semaphore sized to the cores: logins queue for a
//! core instead of starving the async runtime. The queue is short
//! (`QUEUE_PER_CORE` hashes per core): beyond it a login is refused at once
//! with 503 `server_busy`, so a flood of logins costs each one a quick
//! refusal instead of a wait that grows without bound.
//!
//! Each hash needs 19 MiB of working memory. Allocating it per hash costs
//! page faults on every call and, spread over the blocking pool's threads
//! and the allocator's arenas, hundreds of MiB of resident memory under a
//! login burst; so the buffers are kept — at most one per permit — and reused.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use anyhow::Context as _;
use argon2::{
    ARGON2ID_IDENT, Algorithm, Argon2, Block, Params, Version,
    password_hash::phc::{Output, ParamsString, PasswordHash, Salt},
};
use keel_shared::domain::Password;
use tokio::sync::Semaphore;

use crate::error::ApiError;

/// Bytes of salt and of hash output in every new hash.
const SALT_LEN: usize = 16;
const OUTPUT_LEN: usize = 32;
/// Hashes that may wait for a core, per core, before more are refused: at
/// about 25 ms a hash, a waiting login starts within about 100 ms.
const QUEUE_PER_CORE: usize = 4;

#[derive(Debug, Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Hashes running or waiting for a permit.
    admitted: Arc<AtomicUsize>,
    /// The most that may be running or waiting at once.
    capacity: usize,
    /// Working memory of finished hashes, for the next ones.
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    /// Verified against when a login names no account, so an unknown user
    /// costs as much time as a wrong password.
    dummy_hash: Arc<str>,
}

/// Hashes at once: one per core.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

fn owasp_params() -> Params {
    Params::new(
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST,
        Some(OUTPUT_LEN),
    )
    .expect("OWASP parameters are valid")
}

impl PasswordHasher {
    /// # Panics
    /// If argon2 cannot hash at all (never with valid parameters).
    pub fn new() -> Self {
        let cores = cores();
        let buffers = Arc::new(Mutex::new(Vec::with_capacity(cores)));
        // Its own pool, dropped at once: an idle API keeps no 19 MiB buffer
        // for a hash made only at start.
        let dummy = hash_with(
            &Mutex::new(Vec::new()),
            b"keel dummy password for unknown users",
        )
        .expect("argon2 hashes");
        Self {
            permits: Arc::new(Semaphore::new(cores)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: cores * (1 + QUEUE_PER_CORE),
            buffers,
            dummy_hash: dummy.into(),
        }
    }

    /// The PHC string of `password`, with a fresh random salt.
    ///
    /// # Errors
    /// The hasher is saturated (503 `server_busy`), or the blocking pool is
    /// gone (shutting down).
    pub async fn hash(&self, password: &Password) -> Result<String, ApiError> {
        let secret = password.expose().to_owned();
        let buffers = Arc::clone(&self.buffers);
        Ok(self
            .run(move || hash_with(&buffers, secret.as_bytes()))
            .await??)
    }

    /// Whether `password` matches `hash`; with no hash (no such user) it
    /// spends the same time on a dummy and answers `false`.
    ///
    /// # Errors
    /// The hasher is saturated (503 `server_busy`), or the blocking pool is
    /// gone (shutting down).
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> Result<bool, ApiError> {
        let known = hash.is_some();
        let hash = hash.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let secret = password.to_owned();
        let buffers = Arc::clone(&self.buffers);
        let matches = self
            .run(move || verify_with(&buffers, secret.as_bytes(), &hash))
            .await?;
        Ok(known && matches)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let admitted = Admission::enter(&self.admitted, self.capacity).ok_or_else(|| {
            ApiError::busy("too many sign-ins are being checked right now; retry in a second")
        })?;
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .context("password hasher closed")?;
        // The hash owns its admission and its permit: a request dropped
        // mid-hash (the client hung up) must not free a slot while the hash
        // still runs, or hangups would buy unbounded concurrent hashes.
        Ok(tokio::task::spawn_blocking(move || {
            let _held = (admitted, permit);
            work()
        })
        .await
        .context("password hashing task failed")?)
    }

    /// Whether a password check would be admitted now: callers that count
    /// attempts ask first, so a refusal while busy never costs an attempt.
    pub fn has_room(&self) -> bool {
        self.admitted.load(Ordering::Acquire) < self.capacity
    }
}

/// One hash counted against the hasher's capacity while it waits and runs.
struct Admission(Arc<AtomicUsize>);

impl Admission {
    /// `None` when `capacity` hashes are already admitted.
    fn enter(admitted: &Arc<AtomicUsize>, capacity: usize) -> Option<Self> {
        admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < capacity).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(admitted)))
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new()
    }
}

/// Runs argon2id into `out`, on a reused buffer of `params.block_count()` blocks.
fn compute(
    buffers: &Mutex<Vec<Vec<Block>>>,
    params: Params,
    version: Version,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), argon2::Error> {
    let blocks_needed = params.block_count();
    let reused = buffers
        .lock()
        .ok()
        .and_then(|mut pool| pool.pop())
        .filter(|b| b.len() == blocks_needed);
    let mut blocks = reused.unwrap_or_else(|| vec![Block::default(); blocks_needed]);
    let result = Argon2::new(Algorithm::Argon2id, version, params).hash_password_into_with_memory(
        password,
        salt,
        out,
        &mut blocks[..],
    );
    // At most one buffer per permit is kept; more only exist while hashes run.
    if let Ok(mut pool) = buffers.lock()
        && pool.len() < cores()
    {
        pool.push(blocks);
    }
    result
}

fn hash_with(buffers: &Mutex<Vec<Vec<Block>>>, password: &[u8]) -> anyhow::Result<String> {
    let params = owasp_params();
    let salt: [u8; SALT_LEN] = rand::random();
    let mut out = [0u8; OUTPUT_LEN];
    compute(
        buffers,
        params.clone(),
        Version::V0x13,
        password,
        &salt,
        &mut out,
    )
    .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    let phc = PasswordHash {
        algorithm: ARGON2ID_IDENT,
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?,
        salt: Some(Salt::new(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?),
        hash: Some(Output::new(&out).map_err(|e| anyhow::anyhow!("output: {e}"))?),
    };
    Ok(phc.to_string())
}

/// Recomputes with the parameters stored in `phc` (so hashes made under
/// older parameters still verify) and compares in constant time.
fn verify_with(buffers: &Mutex<Vec<Vec<Block>>>, password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    if parsed.algorithm != ARGON2ID_IDENT {
        return false;
    }
    let (Ok(params), Some(salt), Some(expected)) = (
        Params::try_from(&parsed),
        parsed.salt.as_ref(),
        parsed.hash.as_ref(),
    ) else {
        return false;
    };
    let version = parsed
        .version
        .and_then(|v| Version::try_from(v).ok())
        .unwrap_or(Version::V0x13);
    let mut out = vec![0u8; expected.len()];
    if compute(buffers, params, version, password, salt.as_ref(), &mut out).is_err() {
        return false;
    }
    Output::new(&out).is_ok_and(|actual| actual == *expected)
}

#[cfg(test)]
mod tests {
    use argon2::{PasswordHasher as _, PasswordVerifier as _};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_request_keeps_its_slot_until_its_hash_is_done() {
        let hasher = PasswordHasher::new();
        let checks: Vec<_> = (0..hasher.capacity)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.verify("guess", None).await })
            })
            .collect();
        // Let the first hashes start on the blocking pool, then hang up on all.
        while hasher.permits.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        for check in &checks {
            check.abort();
        }
        for check in checks {
            let _ = check.await;
        }
        // The waiting ones left; the running ones still hold their slots.
        let held = hasher.admitted.load(Ordering::Acquire);
        assert!(
            held >= 1,
            "running hashes still count after their requests are gone"
        );
        assert!(
            held <= cores(),
            "waiting requests gave their slots back: {held}"
        );
        while hasher.admitted.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert!(hasher.has_room());
    }

    #[tokio::test]
    async fn hashes_verify_and_use_argon2id_with_owasp_parameters() {
        let hasher = PasswordHasher::new();
        let password = Password::parse("correct horse battery staple").unwrap();
        let hash = hasher.hash(&password).await.unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify("correct horse battery staple", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("correct horse battery stapl", Some(&hash))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("correct horse battery staple", None)
                .await
                .unwrap(),
            "no user, no match"
        );
        assert!(
            !hasher
                .verify("correct horse battery staple", Some("not a hash"))
                .await
                .unwrap()
        );
        let again = hasher.hash(&password).await.unwrap();
        assert_ne!(hash, again, "a fresh salt each time");
    }

    #[tokio::test]
    async fn hashes_agree_with_the_argon2_crates_own_api() {
        let hasher = PasswordHasher::new();
        let ours = hasher
            .hash(&Password::parse("interoperable passphrase").unwrap())
            .await
            .unwrap();
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, owasp_params());
        assert!(
            argon2
                .verify_password(b"interoperable passphrase", ours.as_str())
                .is_ok(),
            "theirs verifies ours"
        );
        let theirs = argon2
            .hash_password(b"interoperable passphrase")
            .unwrap()
            .to_string();
        assert!(
            hasher
                .verify("interoperable passphrase", Some(&theirs))
                .await
                .unwrap(),
            "ours verifies theirs"
        );
        let weaker = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"older parameters")
        .unwrap()
        .to_string();
        assert!(
            hasher
                .verify("older parameters", Some(&weaker))
                .await
                .unwrap(),
            "stored parameters are honoured"
        );
    }

    #[tokio::test]
    async fn long_passwords_are_not_truncated() {
        let hasher = PasswordHasher::new();
        let long = "x".repeat(127) + "a";
        let hash = hasher.hash(&Password::parse(&long).unwrap()).await.unwrap();
        assert!(
            !hasher
                .verify(&("x".repeat(127) + "b"), Some(&hash))
                .await
                .unwrap()
        );
    }
}
