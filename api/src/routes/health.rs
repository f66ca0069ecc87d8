//! Health, liveness and readiness: `/health`, `/live`, `/ready`, and the
//! per-component `/api/v1/health`, `/db`, `/cache`. `/metrics` is not on the
//! public port: the API serves it on `METRICS_PORT` (see `startup`).

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use keel_shared::{
    RedisClient, db,
    health::{self, ComponentStatus, HealthReport},
};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::{ApiError, FieldError},
    extract::AppJson,
    problems::{Code, problem_response},
    state::{AppState, Lifecycle},
};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(api_health))
        .routes(routes!(live))
        .routes(routes!(ready))
        .routes(routes!(database))
        .routes(routes!(cache))
}

/// Component statuses, version and time; 503 only when the database is down.
#[utoipa::path(get, path = "/health", tag = "health",
    responses(
        (status = 200, description = "`healthy`, or `degraded`: Redis down or no worker alive", body = HealthReport,
            example = json!(report_example(true))),
        (status = 503, description = "`unhealthy`: the database is down", body = HealthReport,
            example = json!(report_example(false))),
    ))]
async fn health(State(state): State<AppState>) -> Response {
    let report =
        HealthReport::check(&state.db, &state.redis, state.config.process.environment).await;
    let status = StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::OK);
    (status, AppJson(report)).into_response()
}

/// The same report as `/health`, under the versioned prefix.
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses(
        (status = 200, description = "`healthy`, or `degraded`: Redis down or no worker alive", body = HealthReport,
            example = json!(report_example(true))),
        (status = 503, description = "`unhealthy`: the database is down", body = HealthReport,
            example = json!(report_example(false))),
    ))]
async fn api_health(state: State<AppState>) -> Response {
    health(state).await
}

/// The documented report: all up, or the database down.
fn report_example(database_up: bool) -> serde_json::Value {
    let database = if database_up { "healthy" } else { "unhealthy" };
    serde_json::json!({
        "status": database, "database": database, "redis": "healthy",
        "workers": "healthy", "version": "0.1.0", "timestamp": "2026-01-15T09:30:00Z",
        "components": {"database": database_up, "redis": true, "workers": 2},
        "info": {"version": "0.1.0", "environment": "production"}})
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "alive"}))]
struct Alive {
    #[schema(example = "alive")]
    status: &'static str,
}

/// Liveness: the process is up and serving. Checks no dependency, so a
/// database outage never gets the API restarted.
#[utoipa::path(get, path = "/live", tag = "health",
    responses((status = 200, description = "The process is up", body = Alive)))]
async fn live() -> AppJson<Alive> {
    AppJson(Alive { status: "alive" })
}

#[derive(Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "database": "healthy", "redis": "healthy", "migrations": "current"}))]
struct Ready {
    #[schema(example = "ready")]
    status: &'static str,
    database: ComponentStatus,
    redis: ComponentStatus,
    migrations: &'static str,
}

/// Readiness: Postgres and Redis reachable, migrations applied, and not
/// draining for a stop. Load balancers send traffic only while this is 200.
#[utoipa::path(get, path = "/ready", tag = "health",
    responses(
        (status = 200, description = "Ready for traffic", body = Ready),
        (status = 503, response = inline(Unready)),
    ))]
async fn ready(
    State(db): State<PgPool>,
    State(redis): State<RedisClient>,
    State(lifecycle): State<Lifecycle>,
) -> Result<AppJson<Ready>, ApiError> {
    let (migrations, redis_up) =
        tokio::join!(db::migrations_current(&db), health::redis_up(&redis));
    let mut errors = Vec::new();
    let mut fail = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    };
    if lifecycle.is_draining() {
        fail("lifecycle", "shutting down");
    }
    match migrations {
        Ok(true) => {}
        Ok(false) => fail("migrations", "pending migrations; run `keel-api migrate`"),
        Err(_) => fail("database", "unreachable"),
    }
    if !redis_up {
        fail("redis", "unreachable");
    }
    if errors.is_empty() {
        return Ok(AppJson(Ready {
            status: "ready",
            database: ComponentStatus::Healthy,
            redis: ComponentStatus::Healthy,
            migrations: "current",
        }));
    }
    let detail = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    Err(ApiError::Client {
        code: Code::NotReady,
        detail,
        errors,
    })
}

#[derive(Serialize, ToSchema)]
struct ComponentHealth {
    status: ComponentStatus,
    component: &'static str,
}

/// Whether PostgreSQL answers.
#[utoipa::path(get, path = "/api/v1/health/db", tag = "health",
    responses(
        (status = 200, description = "PostgreSQL answers", body = ComponentHealth,
            example = json!({"status": "healthy", "component": "database"})),
        (status = 503, response = inline(DatabaseDown)),
    ))]
async fn database(State(db): State<PgPool>) -> Result<AppJson<ComponentHealth>, ApiError> {
    if health::database_up(&db).await {
        Ok(AppJson(ComponentHealth {
            status: ComponentStatus::Healthy,
            component: "database",
        }))
    } else {
        Err(ApiError::new(
            Code::DatabaseUnavailable,
            "PostgreSQL does not answer",
        ))
    }
}

/// Whether Redis answers.
#[utoipa::path(get, path = "/api/v1/health/cache", tag = "health",
    responses(
        (status = 200, description = "Redis answers", body = ComponentHealth,
            example = json!({"status": "healthy", "component": "cache"})),
        (status = 503, response = inline(CacheDown)),
    ))]
async fn cache(State(redis): State<RedisClient>) -> Result<AppJson<ComponentHealth>, ApiError> {
    if health::redis_up(&redis).await {
        Ok(AppJson(ComponentHealth {
            status: ComponentStatus::Healthy,
            component: "cache",
        }))
    } else {
        Err(ApiError::new(
            Code::CacheUnavailable,
            "Redis does not answer",
        ))
    }
}

problem_response!(
    /// `not_ready`: `errors` says why (`database`, `redis`, `migrations`,
    /// `lifecycle`).
    Unready = [NotReady]
);
problem_response!(
    /// `database_unavailable`.
    DatabaseDown = [DatabaseUnavailable]
);
problem_response!(
    /// `cache_unavailable`.
    CacheDown = [CacheUnavailable]
);
