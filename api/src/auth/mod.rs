//! Authentication: who is calling, proven by an access token or an API key,
//! and the secrets behind both.
//!
//! - [`password`]: argon2id hashing on the blocking pool.
//! - [`tokens`]: access JWTs, opaque refresh tokens, API key secrets.
//! - [`principal`]: the `Principal` extractor and role checks.
//! - [`user_cache`]: users by id in Redis, for the hot path of every request.
//! - [`client_ip`]: the caller's address, through trusted proxies only.
//! - [`rate_limit`]: limits shared by every API replica, in Redis.
//! - [`revocation`]: ending every credential of an account at once.
//! - [`totp`]: authenticator-app codes, recovery codes, sealed secrets.

pub mod client_ip;
pub mod password;
pub mod principal;
pub mod rate_limit;
pub mod revocation;
pub mod tokens;
pub mod totp;
pub mod user_cache;

pub use principal::{AuthMethod, Principal};
