//! Redis: one multiplexed, self-reconnecting `ConnectionManager` per process
//! (the `redis` 1.x that apalis-redis uses), and the key prefix that keeps
//! deployments and tests apart in one server.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret as _;

use crate::config::Config;

/// A shared Redis connection and this deployment's key prefix. Cloning is cheap.
#[derive(Clone)]
pub struct RedisClient {
    // Behind an `Arc`: `redis::Client` holds the URL's strings, and a clone
    // per request showed up in the API's profile as malloc and free.
    client: Arc<redis::Client>,
    conn: ConnectionManager,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClient")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// A client that connects on first use and reconnects after a failure,
    /// so a process survives Redis restarts. Commands fail within about two
    /// seconds while Redis is down instead of hanging.
    ///
    /// # Errors
    /// `REDIS_URL` is not a valid Redis URL.
    pub fn lazy(config: &Config) -> anyhow::Result<Self> {
        let client = redis::Client::open(config.redis.url.expose_secret())
            .context("REDIS_URL is not a valid redis:// URL")?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager_config)
            .context("creating the Redis connection manager")?;
        Ok(Self {
            client: Arc::new(client),
            conn,
            prefix: config.redis.prefix.as_str().into(),
        })
    }

    /// A client proven to reach Redis, for start-up.
    ///
    /// # Errors
    /// Redis cannot be reached.
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let client = Self::lazy(config)?;
        client
            .ping()
            .await
            .with_context(|| format!("cannot reach Redis at {}", redis_target(config)))?;
        Ok(client)
    }

    /// The shared connection; clones multiplex over one socket.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A dedicated pub/sub connection (subscriptions cannot share the multiplexed one).
    ///
    /// # Errors
    /// Redis is unreachable.
    pub async fn pubsub(&self) -> redis::RedisResult<redis::aio::PubSub> {
        self.client.get_async_pubsub().await
    }

    /// The deployment's prefix, e.g. `keel`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `suffix` under this deployment's prefix: `keel:workers`.
    pub fn key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.prefix)
    }

    /// One round trip.
    ///
    /// # Errors
    /// Redis is unreachable or answers an error.
    pub async fn ping(&self) -> redis::RedisResult<()> {
        redis::cmd("PING").query_async::<()>(&mut self.conn()).await
    }
}

/// Host and port of `REDIS_URL`, never its password.
fn redis_target(config: &Config) -> String {
    url::Url::parse(config.redis.url.expose_secret())
        .map(|u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379)
            )
        })
        .unwrap_or_default()
}
