//! Health, liveness, readiness and metrics: `/health`, `/live`, `/ready`,
//! `/metrics`, and the per-component `/api/v1/health`, `/db`, `/cache`.

use axum::{
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use keel_shared::{
    RedisClient, db,
    health::{self, ComponentStatus, HealthReport},
    telemetry,
};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    error::{ApiError, FieldError, Problem},
    extract::AppJson,
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
        .routes(routes!(metrics))
}

/// Component statuses, version and time; 503 only when the database is down.
#[utoipa::path(get, path = "/health", tag = "health",
    responses(
        (status = 200, description = "healthy, or degraded (Redis down or no worker alive)", body = HealthReport),
        (status = 503, description = "the database is down", body = HealthReport),
    ))]
async fn health(State(state): State<AppState>) -> Response {
    let report = HealthReport::check(&state.db, &state.redis, state.config.environment).await;
    let status = StatusCode::from_u16(report.http_status()).unwrap_or(StatusCode::OK);
    (status, AppJson(report)).into_response()
}

/// The same report as `/health`, under the versioned prefix.
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses(
        (status = 200, body = HealthReport),
        (status = 503, description = "the database is down", body = HealthReport),
    ))]
async fn api_health(state: State<AppState>) -> Response {
    health(state).await
}

#[derive(Serialize, ToSchema)]
struct Alive {
    #[schema(example = "alive")]
    status: &'static str,
}

/// Liveness: the process is up and serving. Checks no dependency, so a
/// database outage never gets the API restarted.
#[utoipa::path(get, path = "/live", tag = "health", responses((status = 200, body = Alive)))]
async fn live() -> AppJson<Alive> {
    AppJson(Alive { status: "alive" })
}

#[derive(Serialize, ToSchema)]
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
        (status = 200, body = Ready),
        (status = 503, description = "not ready; `errors` says why", body = Problem, content_type = "application/problem+json"),
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
        status: StatusCode::SERVICE_UNAVAILABLE,
        code: "not_ready",
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
        (status = 200, body = ComponentHealth),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
async fn database(State(db): State<PgPool>) -> Result<AppJson<ComponentHealth>, ApiError> {
    if health::database_up(&db).await {
        Ok(AppJson(ComponentHealth {
            status: ComponentStatus::Healthy,
            component: "database",
        }))
    } else {
        Err(ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "PostgreSQL does not answer",
        ))
    }
}

/// Whether Redis answers.
#[utoipa::path(get, path = "/api/v1/health/cache", tag = "health",
    responses(
        (status = 200, body = ComponentHealth),
        (status = 503, body = Problem, content_type = "application/problem+json"),
    ))]
async fn cache(State(redis): State<RedisClient>) -> Result<AppJson<ComponentHealth>, ApiError> {
    if health::redis_up(&redis).await {
        Ok(AppJson(ComponentHealth {
            status: ComponentStatus::Healthy,
            component: "cache",
        }))
    } else {
        Err(ApiError::client(
            StatusCode::SERVICE_UNAVAILABLE,
            "cache_unavailable",
            "Redis does not answer",
        ))
    }
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain")))]
async fn metrics() -> Response {
    let mut response = telemetry::metrics().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}
