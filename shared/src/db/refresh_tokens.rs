//! The `refresh_tokens` table: opaque, single-use, rotated refresh tokens,
//! stored as SHA-256 hashes and grouped in families (one per sign-in).

use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::Purge;

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

/// Stores the first token of a new sign-in (family `family_id`) for
/// `user_id`, only if the user is still active at `token_version`: the
/// version the password or code was checked against. A reset or change
/// that committed since (it bumps the version under the row lock) leaves
/// nothing to sign in to; one that comes after revokes this family with
/// the rest. `false` when refused.
///
/// # Errors
/// The database fails.
pub async fn insert_for_version(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    family_id: Uuid,
    token_hash: &[u8],
    expires_at: DateTime<Utc>,
    token_version: i32,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, expires_at) \
         SELECT $1, id, $3, $4, $5 FROM users \
         WHERE id = $2 AND token_version = $6 AND is_active FOR SHARE",
    )
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(family_id)
    .bind(token_hash)
    .bind(expires_at)
    .bind(token_version)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Spends the token with `token_hash` and, if it was live and its user is
/// active, stores `next_hash` in the same family — one transaction, under a
/// shared lock on the user's row. Everything that revokes a user's tokens
/// (logout, password or role change, deactivation) locks that row for update
/// first, so no new token can slip in beside a revocation. Of two
/// concurrent presentations of one token, at most one rotates; the other
/// waits, sees it spent, and revokes the family, the new token included.
///
/// # Errors
/// The database fails.
pub async fn rotate(
    db: &PgPool,
    token_hash: &[u8],
    next_hash: &[u8],
    expires_at: DateTime<Utc>,
) -> Result<Rotation, sqlx::Error> {
    let mut tx = db.begin().await?;
    let Some(user_id) =
        sqlx::query_scalar::<_, Uuid>("SELECT user_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?
    else {
        return Ok(Rotation::Invalid);
    };
    let active: Option<bool> =
        sqlx::query_scalar("SELECT is_active FROM users WHERE id = $1 FOR SHARE")
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?;
    let spent: Option<Uuid> = sqlx::query_scalar(
        "UPDATE refresh_tokens SET used_at = now() \
         WHERE token_hash = $1 AND used_at IS NULL AND revoked_at IS NULL AND expires_at > now() \
         RETURNING family_id",
    )
    .bind(token_hash)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match (spent, active) {
        (Some(family_id), Some(true)) => {
            insert(&mut *tx, user_id, family_id, next_hash, expires_at).await?;
            Rotation::Rotated { user_id, family_id }
        }
        (Some(_), _) => Rotation::Invalid,
        (None, _) => {
            let reused: Option<Uuid> = sqlx::query_scalar(
                "SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND used_at IS NOT NULL",
            )
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
            match reused {
                Some(family_id) => {
                    revoke_family(&mut *tx, family_id).await?;
                    Rotation::Reused { user_id }
                }
                None => Rotation::Invalid,
            }
        }
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Revokes the family of the token with `token_hash` (logout), under the
/// same user-row lock as [`rotate`]; the user and family it ended, if the
/// token was known.
///
/// # Errors
/// The database fails.
pub async fn revoke_family_of(
    db: &PgPool,
    token_hash: &[u8],
) -> Result<Option<(Uuid, Uuid)>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let found: Option<(Uuid, Uuid)> =
        sqlx::query_as("SELECT user_id, family_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
    if let Some((user_id, family_id)) = found {
        lock_user(&mut *tx, user_id).await?;
        revoke_family(&mut *tx, family_id).await?;
    }
    tx.commit().await?;
    Ok(found)
}

/// Revokes `family_id` of `user_id` (the dashboard's sign-out), under the
/// user-row lock; whether it was live.
///
/// # Errors
/// The database fails.
pub async fn revoke_session(
    db: &PgPool,
    user_id: Uuid,
    family_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    lock_user(&mut *tx, user_id).await?;
    let done = sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = now() \
         WHERE family_id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(family_id)
    .bind(user_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// The families of `user_id` revoked after `since`: the sign-ins whose
/// access tokens may still be unexpired although the sign-in has ended.
///
/// # Errors
/// The database fails.
pub async fn ended_since(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    since: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT family_id FROM refresh_tokens WHERE user_id = $1 AND revoked_at > $2",
    )
    .bind(user_id)
    .bind(since)
    .fetch_all(db)
    .await
}

/// Whether the sign-in `family_id` has ended (revoked, or never existed).
///
/// # Errors
/// The database fails.
pub async fn session_ended(db: impl PgExecutor<'_>, family_id: Uuid) -> Result<bool, sqlx::Error> {
    let live: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM refresh_tokens WHERE family_id = $1 AND revoked_at IS NULL)",
    )
    .bind(family_id)
    .fetch_one(db)
    .await?;
    Ok(!live)
}

/// Takes the user-row lock that orders revocations against [`rotate`].
///
/// # Errors
/// The database fails.
pub async fn lock_user(db: impl PgExecutor<'_>, user_id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR UPDATE")
        .bind(user_id)
        .execute(db)
        .await
        .map(drop)
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

/// Revokes every refresh token of `user_id`: logout everywhere. Callers
/// hold the user's row lock (they have just updated the row in the same
/// transaction), which orders this against [`rotate`].
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

/// Refresh tokens expired before the cut-off (now): the hourly purge's.
pub const EXPIRED: Purge = Purge::new("refresh_tokens", "expires_at < $2");
