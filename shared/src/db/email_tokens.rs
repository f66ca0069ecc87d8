//! The `email_tokens` table: single-use, expiring tokens mailed for address
//! verification and password reset, stored as SHA-256 hashes.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::Purge;

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    VerifyEmail,
    ResetPassword,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }
}

/// Stores a token's hash for `user`, valid until `expires_at`.
///
/// # Errors
/// The database fails.
pub async fn insert(
    db: impl PgExecutor<'_>,
    user: Uuid,
    purpose: Purpose,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO email_tokens (id, user_id, purpose, token_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(user)
    .bind(purpose.as_str())
    .bind(token_hash)
    .bind(expires_at)
    .execute(db)
    .await
    .map(drop)
}

/// Spends the token with `token_hash`: the user it was for, if it is for
/// `purpose`, unused and unexpired. A token works once.
///
/// # Errors
/// The database fails.
pub async fn consume(
    db: impl PgExecutor<'_>,
    purpose: Purpose,
    token_hash: &[u8],
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE email_tokens SET used_at = now() \
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now() \
         RETURNING user_id",
    )
    .bind(token_hash)
    .bind(purpose.as_str())
    .fetch_optional(db)
    .await
}

/// Spends every open token of `user` for `purpose` (a newer one replaces them).
///
/// # Errors
/// The database fails.
pub async fn revoke_all(
    db: impl PgExecutor<'_>,
    user: Uuid,
    purpose: Purpose,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE email_tokens SET used_at = now() \
         WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
    )
    .bind(user)
    .bind(purpose.as_str())
    .execute(db)
    .await
    .map(drop)
}

/// Email tokens expired before the cut-off (now): the hourly purge's.
pub const EXPIRED: Purge = Purge::new("email_tokens", "expires_at < $2");
