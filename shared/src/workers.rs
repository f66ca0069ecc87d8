//! The registry of live worker processes in Redis: each worker heartbeats
//! its card every few seconds; a card not refreshed within `STALE_AFTER` is
//! a dead worker. Health counts the live ones; ops lists them.

use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};

use crate::{queue::Queue, redis_client::RedisClient};

/// How often a worker refreshes its card.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A worker silent this long is counted dead: three missed heartbeats.
pub const STALE_AFTER: Duration = Duration::from_secs(15);

/// What a worker says of itself.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkerCard {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub queues: Vec<Queue>,
    /// The task kinds it runs (its build's registry, as its settings offer
    /// it); empty when it serves no `tasks` queue, or is older than this field.
    #[serde(default)]
    pub kinds: Vec<String>,
    pub concurrency: usize,
    /// The worker's release, e.g. `0.1.0`.
    #[serde(default)]
    pub version: String,
    /// Jobs running now.
    #[serde(default)]
    pub in_flight: u64,
    /// Attempts finished since start (completed, failed or retrying).
    #[serde(default)]
    pub processed: u64,
    /// Of those, attempts that failed.
    #[serde(default)]
    pub failed: u64,
    pub started_at: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

fn index_key(redis: &RedisClient) -> String {
    redis.key("workers")
}

fn card_key(redis: &RedisClient, id: &str) -> String {
    redis.key(&format!("worker:{id}"))
}

/// Publishes (or refreshes) `card`, stamped now.
///
/// # Errors
/// Redis is unreachable.
pub async fn heartbeat(redis: &RedisClient, card: &mut WorkerCard) -> redis::RedisResult<()> {
    card.last_seen = Utc::now();
    let json = serde_json::to_string(&card).expect("a worker card serialises");
    let ttl = STALE_AFTER.as_secs() * 2;
    let now = card.last_seen.timestamp_millis();
    redis::pipe()
        .atomic()
        .zadd(index_key(redis), &card.id, now)
        // Workers killed without deregistering: their cards expired, their
        // entries go too, so the index stays as small as the fleet.
        .zrembyscore(index_key(redis), "-inf", now - 2 * stale_millis())
        .set_ex(card_key(redis, &card.id), json, ttl)
        .exec_async(&mut redis.conn())
        .await
}

/// Removes `id` from the registry, on a clean stop.
///
/// # Errors
/// Redis is unreachable.
pub async fn deregister(redis: &RedisClient, id: &str) -> redis::RedisResult<()> {
    redis::pipe()
        .zrem(index_key(redis), id)
        .del(card_key(redis, id))
        .exec_async(&mut redis.conn())
        .await
}

/// How many workers heartbeated within `STALE_AFTER`.
///
/// # Errors
/// Redis is unreachable.
pub async fn count_alive(redis: &RedisClient) -> redis::RedisResult<u64> {
    let since = Utc::now().timestamp_millis() - stale_millis();
    redis.conn().zcount(index_key(redis), since, "+inf").await
}

/// The cards of live workers, oldest heartbeat first.
///
/// # Errors
/// Redis is unreachable.
pub async fn list_alive(redis: &RedisClient) -> redis::RedisResult<Vec<WorkerCard>> {
    let since = Utc::now().timestamp_millis() - stale_millis();
    cards(redis, since).await
}

/// The cards still in Redis, oldest heartbeat first: the live workers and
/// those that went silent within the last `STALE_AFTER` or so (a card
/// outlives its last heartbeat by twice that). Ops marks the stale ones.
///
/// # Errors
/// Redis is unreachable.
pub async fn list_recent(redis: &RedisClient) -> redis::RedisResult<Vec<WorkerCard>> {
    let since = Utc::now().timestamp_millis() - 2 * stale_millis();
    cards(redis, since).await
}

impl WorkerCard {
    /// Whether the worker missed its heartbeats for `STALE_AFTER`.
    pub fn is_stale(&self, now: DateTime<Utc>) -> bool {
        (now - self.last_seen).num_milliseconds() > stale_millis()
    }
}

async fn cards(redis: &RedisClient, since_millis: i64) -> redis::RedisResult<Vec<WorkerCard>> {
    let mut conn = redis.conn();
    let ids: Vec<String> = conn
        .zrangebyscore(index_key(redis), since_millis, "+inf")
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let keys: Vec<String> = ids.iter().map(|id| card_key(redis, id)).collect();
    let cards: Vec<Option<String>> = conn.mget(keys).await?;
    Ok(cards
        .into_iter()
        .flatten()
        .filter_map(|json| serde_json::from_str(&json).ok())
        .collect())
}

fn stale_millis() -> i64 {
    i64::try_from(STALE_AFTER.as_millis()).unwrap_or(i64::MAX)
}
