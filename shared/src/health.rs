//! The health report all three binaries serve: whether Postgres and Redis
//! answer, how many workers are alive, in the shape both seed APIs returned.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::{config::Environment, redis_client::RedisClient, workers};

/// How long one component check may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Keel's version, as every binary reports it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Overall state: `unhealthy` when the database is down (503), `degraded`
/// when Redis is down or no worker is alive, `healthy` otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Healthy,
    Degraded,
    Unhealthy,
}

/// `healthy` or `unhealthy`, per component.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ComponentStatus {
    Healthy,
    Unhealthy,
}

impl From<bool> for ComponentStatus {
    fn from(up: bool) -> Self {
        if up { Self::Healthy } else { Self::Unhealthy }
    }
}

/// `GET /health`.
#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthReport {
    pub status: Status,
    pub database: ComponentStatus,
    pub redis: ComponentStatus,
    /// `healthy` when at least one worker heartbeated recently.
    pub workers: ComponentStatus,
    pub version: String,
    pub timestamp: DateTime<Utc>,
    pub components: Components,
    pub info: Info,
}

#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Components {
    pub database: bool,
    pub redis: bool,
    /// Workers alive now.
    pub workers: u64,
}

#[derive(Clone, Debug, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Info {
    pub version: String,
    pub environment: String,
}

impl HealthReport {
    /// Checks every component at once, each bounded by a short timeout.
    pub async fn check(db: &PgPool, redis: &RedisClient, environment: Environment) -> Self {
        let (database, (redis_up, workers)) =
            tokio::join!(database_up(db), redis_and_workers(redis));
        let status = match (database, redis_up && workers > 0) {
            (false, _) => Status::Unhealthy,
            (true, false) => Status::Degraded,
            (true, true) => Status::Healthy,
        };
        Self {
            status,
            database: database.into(),
            redis: redis_up.into(),
            workers: (workers > 0).into(),
            version: VERSION.into(),
            timestamp: Utc::now(),
            components: Components {
                database,
                redis: redis_up,
                workers,
            },
            info: Info {
                version: VERSION.into(),
                environment: environment.as_str().into(),
            },
        }
    }

    /// 503 only when the database is down: without Redis, Keel still accepts work.
    pub fn http_status(&self) -> u16 {
        if self.status == Status::Unhealthy {
            503
        } else {
            200
        }
    }
}

/// Whether Postgres answers within the check timeout.
pub async fn database_up(db: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, crate::db::ping(db)).await,
        Ok(Ok(()))
    )
}

/// Whether Redis answers within the check timeout.
pub async fn redis_up(redis: &RedisClient) -> bool {
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, redis.ping()).await,
        Ok(Ok(()))
    )
}

async fn redis_and_workers(redis: &RedisClient) -> (bool, u64) {
    match tokio::time::timeout(CHECK_TIMEOUT, workers::count_alive(redis)).await {
        Ok(Ok(n)) => (true, n),
        _ => (false, 0),
    }
}
