//! Rate limits kept in Redis, so every API replica counts the same budget:
//! GCRA (a leaky bucket with one key per client, no background refill) in a
//! Lua script, plus a failed-login counter per account.
//!
//! The general limit is a middleware on the API routes
//! (`middleware::rate_limit`): `RATE_LIMIT_PER_MINUTE` per user when
//! the request carries a valid token or key, per IP otherwise, with
//! `RateLimit-*` headers on every response. Sign-in endpoints call
//! [`RateLimiter::check`] with their own, stricter quotas and fail closed
//! (503) when Redis is down; the general limit fails open.

pub mod decision;

use std::{sync::Arc, time::Duration};

use keel_shared::RedisClient;
use redis::{AsyncCommands as _, Script};

pub use self::decision::Decision;
use crate::error::ApiError;

/// `limit` requests per `period`, with bursts up to `limit`.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    pub limit: u32,
    pub period: Duration,
}

impl Quota {
    pub const fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            period: Duration::from_secs(60),
        }
    }
}

/// Logins per minute from one IP.
pub const LOGIN_PER_IP: Quota = Quota::per_minute(30);
/// Logins per minute naming one account.
pub const LOGIN_PER_ACCOUNT: Quota = Quota::per_minute(20);
/// Registrations per minute from one IP.
pub const REGISTER_PER_IP: Quota = Quota::per_minute(10);
/// Refreshes per minute from one IP.
pub const REFRESH_PER_IP: Quota = Quota::per_minute(30);
/// Failed logins for one account before it is locked for the rest of the window.
pub const MAX_LOGIN_FAILURES: u32 = 10;
pub const LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// A bucket name standing for `value` (an email address) without holding
/// it: the hex of its SHA-256, so the limiter's keys never hold an address.
pub fn hashed(value: &str) -> String {
    super::tokens::hash_secret(value)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Counts an attempt unless the account is locked. Returns 0 when counted,
/// else the seconds until the window ends.
const RESERVE_ATTEMPT: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count >= tonumber(ARGV[1]) then
  return math.max(1, redis.call('TTL', KEYS[1]))
end
if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// GCRA over one key. Returns {allowed, remaining, retry_after_ms, reset_ms};
/// time comes from the Redis server so replicas' clocks do not matter.
const GCRA: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * limit
if allow_at > now then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
local remaining = math.floor((now - allow_at) / interval)
return {1, remaining, 0, new_tat - now}
";

#[derive(Debug, Clone)]
pub struct RateLimiter {
    redis: RedisClient,
    script: Arc<Script>,
    attempts: Arc<Script>,
    pub enabled: bool,
    /// The general quota.
    pub general: Quota,
}

impl RateLimiter {
    pub fn new(redis: RedisClient, enabled: bool, per_minute: u32) -> Self {
        Self {
            redis,
            script: Arc::new(Script::new(GCRA)),
            attempts: Arc::new(Script::new(RESERVE_ATTEMPT)),
            enabled,
            general: Quota::per_minute(per_minute),
        }
    }

    /// Spends one request of `quota` from `bucket`.
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn check(&self, bucket: &str, quota: Quota) -> redis::RedisResult<Decision> {
        if !self.enabled {
            return Ok(Decision {
                allowed: true,
                limit: quota.limit,
                remaining: quota.limit,
                reset_secs: 0,
                retry_after_secs: 0,
            });
        }
        let interval_ms = (quota.period.as_millis() / u128::from(quota.limit.max(1))).max(1);
        let (allowed, remaining, retry_ms, reset_ms): (i64, i64, i64, i64) = self
            .script
            .key(self.redis.key(&format!("rl:{bucket}")))
            .arg(u64::try_from(interval_ms).unwrap_or(u64::MAX))
            .arg(quota.limit)
            .invoke_async(&mut self.redis.conn())
            .await?;
        let secs = |ms: i64| u64::try_from(ms).unwrap_or(0).div_ceil(1000);
        Ok(Decision {
            allowed: allowed == 1,
            limit: quota.limit,
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset_secs: secs(reset_ms),
            retry_after_secs: secs(retry_ms),
        })
    }

    /// Spends one request of `quota` for a sign-in endpoint: refused → 429,
    /// Redis down → 503 (fail closed: no unlimited password guessing).
    ///
    /// # Errors
    /// As above.
    pub async fn enforce(&self, bucket: &str, quota: Quota) -> Result<Decision, ApiError> {
        let decision = self.check(bucket, quota).await.map_err(ApiError::from)?;
        if decision.allowed {
            Ok(decision)
        } else {
            Err(ApiError::RateLimited(decision))
        }
    }

    fn attempts_key(&self, account: &str) -> String {
        self.redis.key(&format!("login-attempts:{account}"))
    }

    /// Counts one password attempt against `account` before it is checked,
    /// refusing (429) once `MAX_LOGIN_FAILURES` are counted in the window.
    /// Counting first, atomically, means a burst of concurrent guesses
    /// cannot all slip past the check; a success clears the count.
    ///
    /// # Errors
    /// Locked (429) or Redis down (503).
    pub async fn reserve_attempt(&self, account: &str) -> Result<(), ApiError> {
        if !self.enabled {
            return Ok(());
        }
        let wait: i64 = self
            .attempts
            .key(self.attempts_key(account))
            .arg(MAX_LOGIN_FAILURES)
            .arg(LOGIN_FAILURE_WINDOW.as_secs())
            .invoke_async(&mut self.redis.conn())
            .await?;
        if wait <= 0 {
            return Ok(());
        }
        let wait = u64::try_from(wait).unwrap_or(1);
        Err(ApiError::RateLimited(Decision {
            allowed: false,
            limit: MAX_LOGIN_FAILURES,
            remaining: 0,
            reset_secs: wait,
            retry_after_secs: wait,
        }))
    }

    /// Forgets an account's attempts after a correct password.
    pub async fn clear_attempts(&self, account: &str) {
        let _: redis::RedisResult<()> = self.redis.conn().del(self.attempts_key(account)).await;
    }
}
