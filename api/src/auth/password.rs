//! Password hashing with argon2id at OWASP's parameters (m = 19 MiB, t = 2,
//! p = 1). Each hash takes tens of milliseconds of CPU, so it runs on the
//! blocking pool behind a semaphore sized to the cores: logins queue for a
//! core instead of starving the async runtime.

use std::sync::Arc;

use anyhow::Context as _;
use argon2::{Algorithm, Argon2, Params, PasswordHasher as _, PasswordVerifier as _, Version};
use keel_shared::domain::Password;
use tokio::sync::Semaphore;

#[derive(Debug, Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when a login names no account, so an unknown user
    /// costs as much time as a wrong password.
    dummy_hash: Arc<str>,
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(
        Params::DEFAULT_M_COST,
        Params::DEFAULT_T_COST,
        Params::DEFAULT_P_COST,
        None,
    )
    .expect("OWASP parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordHasher {
    /// # Panics
    /// If argon2 cannot hash at all (never with valid parameters).
    pub fn new() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let dummy = argon2()
            .hash_password(b"keel dummy password for unknown users")
            .expect("argon2 hashes");
        Self {
            permits: Arc::new(Semaphore::new(cores)),
            dummy_hash: dummy.to_string().into(),
        }
    }

    /// The PHC string of `password`, with a fresh random salt.
    ///
    /// # Errors
    /// The blocking pool is gone (shutting down).
    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        let secret = password.expose().to_owned();
        self.run(move || {
            argon2()
                .hash_password(secret.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    }

    /// Whether `password` matches `hash`; with no hash (no such user) it
    /// spends the same time on a dummy and answers `false`.
    ///
    /// # Errors
    /// The blocking pool is gone (shutting down).
    pub async fn verify(&self, password: &str, hash: Option<&str>) -> anyhow::Result<bool> {
        let known = hash.is_some();
        let hash = hash.map_or_else(|| Arc::clone(&self.dummy_hash), Arc::from);
        let secret = password.to_owned();
        let matches = self
            .run(move || argon2().verify_password(secret.as_bytes(), &*hash).is_ok())
            .await?;
        Ok(known && matches)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .context("password hasher closed")?;
        tokio::task::spawn_blocking(work)
            .await
            .context("password hashing task failed")
    }
}

impl Default for PasswordHasher {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let again = hasher.hash(&password).await.unwrap();
        assert_ne!(hash, again, "a fresh salt each time");
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
