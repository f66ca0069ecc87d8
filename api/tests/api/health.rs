use chrono::Utc;
use keel_shared::queue::Queue;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{
    TestApp, assert_problem, fields, json_at, spawn_app, spawn_app_with,
    spawn_app_without_database, spawn_app_without_redis,
};

/// Asserts `/ready` answers 503 `not_ready`; the fields it names.
async fn unready_fields(app: &TestApp) -> Vec<String> {
    let problem = assert_problem(
        app.ready().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    fields(&problem)
}

#[tokio::test]
async fn health_is_degraded_without_a_worker_and_healthy_with_one() {
    let app = spawn_app().await;

    let body = json_at(app.health().await, StatusCode::OK).await;
    assert_eq!(body["status"], "degraded", "no worker is alive yet: {body}");
    assert_eq!(body["database"], "healthy");
    assert_eq!(body["redis"], "healthy");
    assert_eq!(body["workers"], "unhealthy");
    assert_eq!(
        body["components"],
        serde_json::json!({"database": true, "redis": true, "workers": 0})
    );
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(body["info"]["environment"], "development");
    let timestamp: chrono::DateTime<Utc> = body["timestamp"].as_str().unwrap().parse().unwrap();
    assert!((Utc::now() - timestamp).num_seconds().abs() < 10);

    app.announce_worker("test-worker", Queue::Tasks).await;

    let body: Value = app.health().await.json().await.unwrap();
    assert_eq!(body["status"], "healthy", "{body}");
    assert_eq!(body["workers"], "healthy");
    assert_eq!(body["components"]["workers"], 1);
}

#[tokio::test]
async fn health_is_503_unhealthy_when_the_database_is_unreachable() {
    let app = spawn_app_without_database().await;

    let body = json_at(app.health().await, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["database"], "unhealthy");
    assert_eq!(body["components"]["database"], false);
    assert_eq!(body["redis"], "healthy", "Redis is still up: {body}");

    let response = app.get("/api/v1/health").await;
    assert_eq!(
        response.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the versioned alias agrees"
    );
}

#[tokio::test]
async fn health_is_degraded_but_200_when_redis_is_unreachable() {
    let app = spawn_app_without_redis().await;

    let response = app.health().await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "without Redis, Keel still accepts work"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["redis"], "unhealthy");
    assert_eq!(body["database"], "healthy");
}

#[tokio::test]
async fn live_is_200_even_when_the_database_is_unreachable() {
    let app = spawn_app_without_database().await;

    let body = json_at(app.live().await, StatusCode::OK).await;
    assert_eq!(body["status"], "alive");
}

#[tokio::test]
async fn ready_is_200_with_dependencies_up_and_migrations_applied() {
    let app = spawn_app().await;

    let body = json_at(app.ready().await, StatusCode::OK).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["migrations"], "current");
}

#[tokio::test]
async fn ready_is_503_naming_the_database_when_it_is_unreachable() {
    let app = spawn_app_without_database().await;
    assert_eq!(unready_fields(&app).await, ["database"]);
}

#[tokio::test]
async fn ready_is_503_naming_redis_when_it_is_unreachable() {
    let app = spawn_app_without_redis().await;
    assert_eq!(unready_fields(&app).await, ["redis"]);
}

#[tokio::test]
async fn ready_is_503_while_migrations_are_pending() {
    let app = spawn_app().await;
    let pool = &app.db.as_ref().unwrap().pool;
    // Forget the newest migration, as a database one release behind would.
    sqlx::query(
        "DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)",
    )
    .execute(pool)
    .await
    .unwrap();

    let problem = assert_problem(
        app.ready().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    let errors = problem.errors.unwrap();
    assert_eq!(errors[0].field, "migrations");
    assert!(errors[0].message.contains("keel-api migrate"), "{errors:?}");
}

#[tokio::test]
async fn component_checks_report_each_dependency() {
    let app = spawn_app().await;
    let db: Value = app.health_db().await.json().await.unwrap();
    assert_eq!(
        db,
        serde_json::json!({"status": "healthy", "component": "database"})
    );
    let cache: Value = app.health_cache().await.json().await.unwrap();
    assert_eq!(
        cache,
        serde_json::json!({"status": "healthy", "component": "cache"})
    );

    let down = spawn_app_without_database().await;
    assert_problem(
        down.health_db().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "database_unavailable",
    )
    .await;
    assert_eq!(down.health_cache().await.status(), StatusCode::OK);

    let no_redis = spawn_app_without_redis().await;
    let cache = no_redis.health_cache().await;
    assert_problem(cache, StatusCode::SERVICE_UNAVAILABLE, "cache_unavailable").await;
}

#[tokio::test]
async fn health_answers_with_or_without_a_trailing_slash() {
    let app = spawn_app().await;
    for path in [
        "/health/",
        "/api/v1/health/",
        "/api/v1/health/db/",
        "/ready/",
        "/live/",
    ] {
        assert_eq!(app.get(path).await.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app_with(&[]).await;
    app.live().await;
    app.live().await;
    app.get("/no/such/route").await;

    let text = app.metrics().await;
    let count = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(
        count(r#"keel_http_requests_total{method="GET",route="/live",status="200"}"#) >= 2.0,
        "{text}"
    );
    assert!(
        count(r#"keel_http_requests_total{method="GET",route="unmatched",status="404"}"#) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains(r#"keel_http_request_duration_seconds_bucket{method="GET",route="/live",status="200",le="0.005"}"#),
        "latency is a histogram with fine buckets: {text}"
    );
    assert!(
        !text.contains("/no/such/route"),
        "raw paths never become labels"
    );
}
