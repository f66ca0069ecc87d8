//! Users by id, for the hot path of every authenticated request (is the
//! user active? which role? which token version? which sign-ins have been
//! signed out?), in two layers:
//!
//! - in this process, for as long as this process hears every change: each
//!   change is published on Redis, and every replica drops its copy when the
//!   message arrives. While the subscription is down the local layer is
//!   emptied and bypassed, so a missed message can never leave a stale user.
//! - in Redis, shared by the replicas, for five minutes.
//!
//! A change writes a short-lived tombstone instead of just deleting the
//! Redis entry, and fills are `SET NX`: a request that read the old row just
//! before the change cannot put it back. Locally, a fill is dropped if any
//! invalidation arrived while it was reading. With Redis down, reads go to
//! Postgres.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use keel_shared::{
    RedisClient,
    db::{refresh_tokens, users::User},
};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Redis entries expire on their own too, bounding staleness if an invalidation is lost.
const REDIS_TTL_SECS: u64 = 300;
/// How long a changed user's Redis entry refuses fills.
const TOMBSTONE_TTL_SECS: u64 = 2;
const TOMBSTONE: &str = "-";
/// Local entries live at most this long even when no change is heard.
const LOCAL_TTL: Duration = Duration::from_secs(60);
/// Local entries kept at most; past this the map is emptied (cheap, bounded).
const LOCAL_CAPACITY: usize = 50_000;

/// What a request's credentials are checked against: the user (without
/// the password hash) and the sign-ins of theirs that ended recently
/// enough that an access token of one may not have expired yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedUser {
    pub user: User,
    /// Refresh families revoked within the last access-token lifetime.
    pub ended_sessions: Vec<Uuid>,
}

impl CachedUser {
    /// Whether the sign-in `session` was signed out.
    pub fn session_ended(&self, session: Option<Uuid>) -> bool {
        session.is_some_and(|s| self.ended_sessions.contains(&s))
    }
}

/// The two-layer cache; clones share it.
#[derive(Debug, Clone)]
pub struct UserCache {
    local: Arc<Local>,
    redis: RedisClient,
    /// How far back an ended sign-in can still have a live access token.
    session_horizon: chrono::Duration,
}

#[derive(Debug, Default)]
struct Local {
    users: RwLock<HashMap<Uuid, (CachedUser, Instant)>>,
    /// Only while subscribed is the local layer trustworthy.
    live: AtomicBool,
    /// Bumped by every invalidation heard; a fill that started under an older
    /// generation is not kept.
    generation: AtomicU64,
}

impl Local {
    fn get(&self, id: Uuid) -> Option<CachedUser> {
        if !self.live.load(Ordering::Acquire) {
            return None;
        }
        let users = self.users.read().ok()?;
        users
            .get(&id)
            .filter(|(_, at)| at.elapsed() < LOCAL_TTL)
            .map(|(user, _)| user.clone())
    }

    fn fill(&self, user: &CachedUser, generation: u64) {
        if !self.live.load(Ordering::Acquire)
            || self.generation.load(Ordering::Acquire) != generation
        {
            return;
        }
        if let Ok(mut users) = self.users.write() {
            if users.len() >= LOCAL_CAPACITY {
                users.clear();
            }
            users.insert(user.user.id, (user.clone(), Instant::now()));
        }
    }

    fn drop_user(&self, id: Uuid) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut users) = self.users.write() {
            users.remove(&id);
        }
    }

    fn set_live(&self, live: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut users) = self.users.write() {
            users.clear();
        }
        self.live.store(live, Ordering::Release);
    }
}

fn key(redis: &RedisClient, id: Uuid) -> String {
    redis.key(&format!("user:{id}"))
}

fn channel(redis: &RedisClient) -> String {
    redis.key("user-invalidations")
}

impl UserCache {
    /// A cache whose local layer switches on once `listen` has subscribed
    /// (a process that never listens, like the admin command line, only
    /// publishes its changes).
    pub fn new(redis: RedisClient, access_ttl: std::time::Duration) -> Self {
        // The tokens' own leeway (5 s) on top: a token is accepted that long past `exp`.
        let horizon = access_ttl + Duration::from_secs(10);
        Self {
            local: Arc::new(Local::default()),
            redis,
            session_horizon: chrono::Duration::from_std(horizon).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// Keeps the subscription to invalidations until `shutdown`, reconnecting
    /// with backoff; the local layer is off whenever it is down.
    pub fn listen(&self, shutdown: CancellationToken) {
        let local = Arc::clone(&self.local);
        let redis = self.redis.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let subscribed = async {
                    let mut pubsub = redis.pubsub().await?;
                    pubsub.subscribe(channel(&redis)).await?;
                    Ok::<_, redis::RedisError>(pubsub)
                };
                match tokio::select! { () = shutdown.cancelled() => return, r = subscribed => r } {
                    Ok(pubsub) => {
                        local.set_live(true);
                        backoff = Duration::from_millis(100);
                        let mut messages = pubsub.into_on_message();
                        loop {
                            let message = tokio::select! { () = shutdown.cancelled() => return, m = messages.next() => m };
                            let Some(message) = message else { break };
                            if let Some(id) = message
                                .get_payload::<String>()
                                .ok()
                                .and_then(|p| p.parse().ok())
                            {
                                local.drop_user(id);
                            }
                        }
                        local.set_live(false);
                        tracing::warn!(
                            "user invalidation channel lost; local user cache off until resubscribed"
                        );
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot subscribe to user invalidations yet")
                    }
                }
                tokio::select! { () = shutdown.cancelled() => return, () = tokio::time::sleep(backoff) => {} }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
    }

    /// The user `id`: from this process, Redis, or Postgres. Cached copies
    /// have no password hash: callers that check a password load from Postgres.
    ///
    /// # Errors
    /// Postgres fails (a Redis failure falls back to Postgres).
    pub async fn get(&self, db: &PgPool, id: Uuid) -> Result<Option<CachedUser>, sqlx::Error> {
        let redis = &self.redis;
        if let Some(user) = self.local.get(id) {
            return Ok(Some(user));
        }
        let generation = self.local.generation.load(Ordering::Acquire);
        let mut conn = redis.conn();
        let mut tombstoned = false;
        match conn.get::<_, Option<String>>(key(redis, id)).await {
            Ok(Some(json)) if json == TOMBSTONE => tombstoned = true,
            Ok(Some(json)) => {
                if let Ok(user) = serde_json::from_str::<CachedUser>(&json) {
                    self.local.fill(&user, generation);
                    return Ok(Some(user));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "user cache unavailable; reading Postgres"),
        }
        let Some(user) = keel_shared::db::users::find_by_id(db, id).await? else {
            return Ok(None);
        };
        let since = chrono::Utc::now() - self.session_horizon;
        let ended_sessions = refresh_tokens::ended_since(db, id, since).await?;
        let user = Some(CachedUser {
            user,
            ended_sessions,
        });
        if let Some(user) = user.as_ref().filter(|_| !tombstoned) {
            self.local.fill(user, generation);
            let json = serde_json::to_string(user).expect("a user serialises");
            let filled: redis::RedisResult<()> = redis::cmd("SET")
                .arg(key(redis, id))
                .arg(json)
                .arg("EX")
                .arg(REDIS_TTL_SECS)
                .arg("NX")
                .query_async(&mut conn)
                .await;
            if let Err(e) = filled {
                tracing::debug!(error = %e, "could not fill the user cache");
            }
        }
        Ok(user)
    }

    /// Forgets `id` everywhere; call after every change to the user.
    pub async fn invalidate(&self, id: Uuid) {
        let redis = &self.redis;
        self.local.drop_user(id);
        let result: redis::RedisResult<()> = redis::pipe()
            .set_ex(key(redis, id), TOMBSTONE, TOMBSTONE_TTL_SECS)
            .publish(channel(redis), id.to_string())
            .exec_async(&mut redis.conn())
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, user_id = %id, "could not invalidate a cached user; it expires within 5 minutes");
        }
    }
}
