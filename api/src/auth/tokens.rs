//! The secrets that stand for a user: short-lived access JWTs (HS256 by
//! default, the algorithm pinned), opaque refresh tokens and API keys. The
//! opaque ones are 256 random bits, shown once, stored only as SHA-256.

use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use keel_shared::{
    Config,
    config::{JwtAlgorithm, SigningKey},
    db::users::User,
};
use secrecy::ExposeSecret as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

/// `iss` of every access token.
pub const ISSUER: &str = "keel";
/// `aud` of every access token.
pub const AUDIENCE: &str = "keel-api";
/// `typ` of an access token; anything else is refused where one is expected.
pub const ACCESS_TYPE: &str = "access";
/// Visible start of every API key.
pub const API_KEY_PREFIX: &str = "keel_";

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub sub: Uuid,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: Uuid,
    pub iss: String,
    pub aud: String,
    /// Token type: `access`.
    pub typ: String,
    /// The user's `token_version` at issue; a bump ends the token.
    pub ver: i32,
    /// The sign-in (refresh family) the token belongs to: signing that one
    /// session out (`logout`) ends the token with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<Uuid>,
}

/// Why a token was refused; every kind answers the same 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token has expired")]
    Expired,
    #[error("the token is invalid")]
    Invalid,
}

/// Signs and checks access tokens with the configured key and algorithm.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// `SECRET_KEY_PREVIOUS`, while a rotation lasts.
    previous: Option<DecodingKey>,
    algorithm: Algorithm,
    validation: Validation,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// Seals TOTP secrets, under a key derived from the same `SECRET_KEY`.
    pub totp: super::totp::Sealer,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKeys")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TokenKeys {
    pub fn new(config: &Config, key: &SigningKey) -> Self {
        let secret = key.key.expose_secret().as_bytes();
        let algorithm = match config.auth.algorithm {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Hs384 => Algorithm::HS384,
            JwtAlgorithm::Hs512 => Algorithm::HS512,
        };
        // Only the configured algorithm verifies: `none` and algorithm
        // confusion are refused by construction.
        let mut validation = Validation::new(algorithm);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            previous: key
                .previous
                .as_ref()
                .map(|k| DecodingKey::from_secret(k.expose_secret().as_bytes())),
            algorithm,
            validation,
            access_ttl: Duration::from_secs(
                u64::from(config.auth.access_token_expire_minutes) * 60,
            ),
            refresh_ttl: Duration::from_secs(
                u64::from(config.auth.refresh_token_expire_days) * 86_400,
            ),
            totp: super::totp::Sealer::new(&key.key, key.previous.as_ref()),
        }
    }

    /// Seconds an access token lives.
    pub fn access_ttl_secs(&self) -> i64 {
        i64::try_from(self.access_ttl.as_secs()).unwrap_or(i64::MAX)
    }

    /// When a refresh token issued now expires.
    pub fn refresh_expiry(&self) -> DateTime<Utc> {
        Utc::now() + self.refresh_ttl
    }

    /// A signed access token for `user`, outside any sign-in (it ends only
    /// with its expiry or the user's token version).
    ///
    /// # Panics
    /// Never with an HMAC key.
    pub fn issue_access(&self, user: &User) -> String {
        self.issue(user, None)
    }

    /// A signed access token of the sign-in `session` (a refresh family).
    ///
    /// # Panics
    /// Never with an HMAC key.
    pub fn issue_session_access(&self, user: &User, session: Uuid) -> String {
        self.issue(user, Some(session))
    }

    fn issue(&self, user: &User, sid: Option<Uuid>) -> String {
        let now = Utc::now().timestamp();
        let claims = AccessClaims {
            sub: user.id,
            exp: now + self.access_ttl_secs(),
            iat: now,
            nbf: now,
            jti: Uuid::now_v7(),
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            typ: ACCESS_TYPE.into(),
            ver: user.token_version,
            sid,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, &self.encoding)
            .expect("HMAC signing cannot fail")
    }

    /// The claims of a valid access token: signature, algorithm, issuer,
    /// audience, time window and type all checked.
    ///
    /// # Errors
    /// Expired, or invalid in any other way.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        let decode = |key| jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation);
        let data = match (decode(&self.decoding), &self.previous) {
            // Signed before `SECRET_KEY` was rotated: the previous key
            // checks it, and everything else is checked as usual.
            (Err(e), Some(previous)) if *e.kind() == ErrorKind::InvalidSignature => {
                decode(previous)
            }
            (result, _) => result,
        }
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => TokenError::Expired,
            _ => TokenError::Invalid,
        })?;
        if data.claims.typ != ACCESS_TYPE {
            return Err(TokenError::Invalid);
        }
        Ok(data.claims)
    }
}

/// SHA-256 of a secret, as stored. The secrets are random, so no salt or
/// slow hash is needed: there is nothing to guess.
pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn random_secret() -> String {
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A new refresh token and its hash.
pub fn new_refresh_token() -> (String, [u8; 32]) {
    let token = random_secret();
    let hash = hash_secret(&token);
    (token, hash)
}

/// A new API key: the whole key (shown once), its visible prefix, its hash.
pub fn new_api_key() -> (String, String, [u8; 32]) {
    let id: [u8; 4] = rand::random();
    let prefix = format!(
        "{API_KEY_PREFIX}{}",
        id.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    let key = format!("{prefix}_{}", random_secret());
    let hash = hash_secret(&key);
    (key, prefix, hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_carry_their_prefix_and_enough_entropy() {
        let (key, prefix, hash) = new_api_key();
        assert!(key.starts_with(&prefix) && prefix.starts_with(API_KEY_PREFIX));
        assert!(
            key.len() >= prefix.len() + 1 + 43,
            "256 random bits after the prefix: {key}"
        );
        assert_eq!(hash, hash_secret(&key));
        assert_ne!(new_api_key().0, key);
    }
}
