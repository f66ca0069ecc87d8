//! The `idempotency_keys` table: the first response to an `Idempotency-Key`,
//! replayed for 24 hours. The key is taken inside the transaction that
//! creates the object, so a concurrent duplicate waits for that transaction
//! and then finds the response; a rolled-back create frees the key.

use sqlx::{PgConnection, types::Json};
use uuid::Uuid;

use super::Purge;

/// How long a key is remembered, in hours.
pub const KEY_TTL_HOURS: i32 = 24;

/// Keys taken before the cut-off; [`purge_expired`] sets it a TTL back.
const TAKEN_BEFORE: Purge = Purge::new("idempotency_keys", "created_at < $2");

/// What taking a key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The key is ours: create the object, then [`record`] the response.
    Fresh,
    /// The key was used before with the same request: this was its response.
    Replay {
        status: u16,
        body: serde_json::Value,
    },
    /// The key was used before with another request.
    Mismatch,
}

/// Takes `key` for `user` in the caller's transaction. `request_hash` names
/// the request (method, path and body) so a reused key with another body is
/// caught. A key older than the TTL is taken over.
///
/// # Errors
/// The database fails.
pub async fn claim(
    tx: &mut PgConnection,
    user: Uuid,
    key: &str,
    request_hash: &[u8],
) -> Result<Claim, sqlx::Error> {
    // Waits on a concurrent transaction holding the same key, then either wins
    // (no row, or an expired one) or sees the committed row.
    let taken: Option<(bool,)> = sqlx::query_as(
        "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3) \
         ON CONFLICT (user_id, key) DO UPDATE \
             SET request_hash = EXCLUDED.request_hash, response_status = NULL, \
                 response_body = NULL, created_at = now() \
             WHERE idempotency_keys.created_at < now() - make_interval(hours => $4) \
         RETURNING true",
    )
    .bind(user)
    .bind(key)
    .bind(request_hash)
    .bind(KEY_TTL_HOURS)
    .fetch_optional(&mut *tx)
    .await?;
    if taken.is_some() {
        return Ok(Claim::Fresh);
    }
    let (hash, status, body): (Vec<u8>, Option<i16>, Option<Json<serde_json::Value>>) =
        sqlx::query_as(
            "SELECT request_hash, response_status, response_body FROM idempotency_keys \
             WHERE user_id = $1 AND key = $2",
        )
        .bind(user)
        .bind(key)
        .fetch_one(&mut *tx)
        .await?;
    if hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    match (status, body) {
        (Some(status), Some(Json(body))) => Ok(Claim::Replay {
            status: u16::try_from(status).unwrap_or(200),
            body,
        }),
        // Committed without a response cannot happen (both are written in one
        // transaction); treat it as a mismatch rather than create twice.
        _ => Ok(Claim::Mismatch),
    }
}

/// Stores the response to replay for `key`, in the transaction that took it.
///
/// # Errors
/// The database fails.
pub async fn record(
    tx: &mut PgConnection,
    user: Uuid,
    key: &str,
    status: u16,
    body: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE idempotency_keys SET response_status = $3, response_body = $4 \
         WHERE user_id = $1 AND key = $2",
    )
    .bind(user)
    .bind(key)
    .bind(i16::try_from(status).unwrap_or(200))
    .bind(Json(body))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Deletes up to `limit` keys older than their TTL at `now`; returns how many.
///
/// # Errors
/// The database fails.
pub async fn purge_expired(
    db: impl sqlx::PgExecutor<'_>,
    now: chrono::DateTime<chrono::Utc>,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let before = now - chrono::Duration::hours(i64::from(KEY_TTL_HOURS));
    TAKEN_BEFORE.delete_some(db, before, limit).await
}
