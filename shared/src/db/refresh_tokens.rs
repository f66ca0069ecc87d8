//! The `refresh_tokens` table: opaque, single-use, rotated refresh tokens,
//! stored as SHA-256 hashes and grouped in families (one per sign-in).

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

/// What presenting a refresh token came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was live and is now spent: issue the next pair in `family_id`.
    Rotated { user_id: Uuid, family_id: Uuid },
    /// The token had been spent already: a copy is in someone else's hands.
    /// Its whole family has been revoked.
    Reused { user_id: Uuid },
    /// Unknown, expired or revoked.
    Invalid,
}

/// Stores a new token of `family_id`.
///
/// # Errors
/// The database fails.
pub async fn insert(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    family_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(family_id)
    .bind(token_hash)
    .bind(expires_at)
    .execute(db)
    .await
    .map(drop)
}

/// Spends the token with `token_hash`. The spend is one conditional UPDATE,
/// so of two concurrent presentations at most one rotates.
///
/// # Errors
/// The database fails.
pub async fn spend(
    db: impl PgExecutor<'_> + Copy,
    token_hash: &[u8],
) -> Result<Rotation, sqlx::Error> {
    let spent: Option<(Uuid, Uuid)> = sqlx::query_as(
        "UPDATE refresh_tokens SET used_at = now() \
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() \
         RETURNING user_id, family_id",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    if let Some((user_id, family_id)) = spent {
        return Ok(Rotation::Rotated { user_id, family_id });
    }
    let previous: Option<(Uuid, Uuid, bool)> = sqlx::query_as(
        "SELECT user_id, family_id, used_at IS NOT NULL FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await?;
    match previous {
        Some((user_id, family_id, true)) => {
            revoke_family(db, family_id).await?;
            Ok(Rotation::Reused { user_id })
        }
        _ => Ok(Rotation::Invalid),
    }
}

/// Revokes every token of the family `token_hash` belongs to; whether there was one.
///
/// # Errors
/// The database fails.
pub async fn revoke_family_of(
    db: impl PgExecutor<'_>,
    token_hash: &[u8],
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, now()) \
         WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
    )
    .bind(token_hash)
    .execute(db)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// # Errors
/// The database fails.
pub async fn revoke_family(db: impl PgExecutor<'_>, family_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE family_id = $1",
    )
    .bind(family_id)
    .execute(db)
    .await
    .map(drop)
}

/// Revokes every refresh token of `user_id`: logout everywhere.
///
/// # Errors
/// The database fails.
pub async fn revoke_all_for_user(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
    )
    .bind(user_id)
    .execute(db)
    .await
    .map(drop)
}
