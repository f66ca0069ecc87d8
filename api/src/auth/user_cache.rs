//! Users by id, cached in Redis: every authenticated request needs its
//! user (is it active? which role? which token version?), and Redis answers
//! faster than Postgres. Every change to a user drops its entry; with Redis
//! down, reads go to Postgres.

use keel_shared::{RedisClient, db::users::User};
use redis::AsyncCommands as _;
use sqlx::PgPool;
use uuid::Uuid;

/// Entries expire on their own too, bounding staleness if an invalidation is lost.
const TTL_SECS: u64 = 300;

fn key(redis: &RedisClient, id: Uuid) -> String {
    redis.key(&format!("user:{id}"))
}

/// The user `id`, from the cache or Postgres. The cached copy has no
/// password hash: callers that check a password load from Postgres.
///
/// # Errors
/// Postgres fails (a Redis failure falls back to Postgres).
pub async fn get(db: &PgPool, redis: &RedisClient, id: Uuid) -> Result<Option<User>, sqlx::Error> {
    let mut conn = redis.conn();
    match conn.get::<_, Option<String>>(key(redis, id)).await {
        Ok(Some(json)) => {
            if let Ok(user) = serde_json::from_str(&json) {
                return Ok(Some(user));
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "user cache unavailable; reading Postgres"),
    }
    let user = keel_shared::db::users::find_by_id(db, id).await?;
    if let Some(user) = &user {
        let json = serde_json::to_string(user).expect("a user serialises");
        if let Err(e) = conn
            .set_ex::<_, _, ()>(key(redis, id), json, TTL_SECS)
            .await
        {
            tracing::debug!(error = %e, "could not fill the user cache");
        }
    }
    Ok(user)
}

/// Drops the cached copy of `id`; call after every change to the user.
pub async fn invalidate(redis: &RedisClient, id: Uuid) {
    if let Err(e) = redis.conn().del::<_, ()>(key(redis, id)).await {
        tracing::warn!(error = %e, user_id = %id, "could not drop a cached user; it expires within 5 minutes");
    }
}
