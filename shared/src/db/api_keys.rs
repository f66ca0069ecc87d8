//! The `api_keys` table: long-lived keys that act as their owner, stored as
//! SHA-256 hashes with a visible prefix.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{FromRow, PgExecutor};
use uuid::Uuid;

#[derive(Debug, Clone, FromRow, Serialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiKey {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub name: String,
    /// The key's visible start, e.g. `keel_3f9a1c2b`.
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The columns every query returns, as a literal for `concat!` (sqlx takes
/// only literal SQL, so nothing dynamic can slip into a statement).
macro_rules! api_key_columns {
    () => {
        "id, user_id, name, prefix, created_at, last_used_at, expires_at"
    };
}

/// # Errors
/// The database fails.
pub async fn insert(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
    name: &str,
    prefix: &str,
    key_hash: &[u8],
    expires_at: Option<DateTime<Utc>>,
) -> Result<ApiKey, sqlx::Error> {
    sqlx::query_as(concat!(
        "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
        api_key_columns!()
    ))
    .bind(Uuid::now_v7())
    .bind(user_id)
    .bind(name)
    .bind(prefix)
    .bind(key_hash)
    .bind(expires_at)
    .fetch_one(db)
    .await
}

/// The owner's keys, newest first.
///
/// # Errors
/// The database fails.
pub async fn list_for_user(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<Vec<ApiKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        api_key_columns!(),
        " FROM api_keys WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
    ))
    .bind(user_id)
    .fetch_all(db)
    .await
}

/// The unexpired key with `key_hash`.
///
/// # Errors
/// The database fails.
pub async fn find_live_by_hash(
    db: impl PgExecutor<'_>,
    key_hash: &[u8],
) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        api_key_columns!(),
        " FROM api_keys WHERE key_hash = $1 AND (expires_at IS NULL OR expires_at > now())"
    ))
    .bind(key_hash)
    .fetch_optional(db)
    .await
}

/// Replaces the secret of the owner's key `id`; the old secret stops working with this statement.
///
/// # Errors
/// The database fails.
pub async fn replace_secret(
    db: impl PgExecutor<'_>,
    id: Uuid,
    user_id: Uuid,
    prefix: &str,
    key_hash: &[u8],
) -> Result<Option<ApiKey>, sqlx::Error> {
    sqlx::query_as(concat!(
        "UPDATE api_keys SET prefix = $3, key_hash = $4, last_used_at = NULL \
         WHERE id = $1 AND user_id = $2 RETURNING ",
        api_key_columns!()
    ))
    .bind(id)
    .bind(user_id)
    .bind(prefix)
    .bind(key_hash)
    .fetch_optional(db)
    .await
}

/// Deletes the owner's key `id`; whether it existed.
///
/// # Errors
/// The database fails.
pub async fn delete(db: impl PgExecutor<'_>, id: Uuid, user_id: Uuid) -> Result<bool, sqlx::Error> {
    let done = sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Deletes every key of `user_id` (a password reset ends them all); how many.
///
/// # Errors
/// The database fails.
pub async fn delete_all_for_user(
    db: impl PgExecutor<'_>,
    user_id: Uuid,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM api_keys WHERE user_id = $1")
        .bind(user_id)
        .execute(db)
        .await?;
    Ok(done.rows_affected())
}

/// Records a use, at most once a minute per key so a busy key costs no write per request.
///
/// # Errors
/// The database fails.
pub async fn touch(db: impl PgExecutor<'_>, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = now() \
         WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')",
    )
    .bind(id)
    .execute(db)
    .await
    .map(drop)
}
