//! `/metrics` of the API (on its metrics port, never the public one) after a known workload: HTTP by route template and
//! status, tasks created and retried by kind, the queue and worker gauges
//! sampled at scrape time, and open WebSockets — each at its exact value.
//! (Exact, because nextest runs each test in a process of its own and the
//! recorder is per process.)

use std::time::Duration;

use chrono::Utc;
use keel_shared::{domain::Role, queue::Queue};
use keel_testing::Scrape;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestUser, spawn_app_with};

async fn post(app: &TestApp, user: &TestUser, path: &str, body: Option<&Value>) -> Value {
    let response = app.send(Method::POST, path, &user.token, body).await;
    assert!(
        response.status().is_success(),
        "POST {path}: {}",
        response.status()
    );
    response.json().await.unwrap()
}

#[tokio::test]
async fn metrics_show_requests_tasks_queues_workers_and_sockets_at_their_exact_values() {
    let app = spawn_app_with(&["--rate-limit-enabled", "false"]).await;
    let user = app.create_user(Role::User).await;

    for _ in 0..3 {
        assert_eq!(app.me(&user.token).await.status(), StatusCode::OK);
    }
    let missing = format!("/api/v1/tasks/{}", uuid::Uuid::new_v4());
    assert_eq!(
        app.get_as(&missing, &user.token).await.status(),
        StatusCode::NOT_FOUND
    );
    // Six tasks through every create path, and a retry: echo ×3, noop ×3.
    post(
        &app,
        &user,
        "/api/v1/tasks",
        Some(&json!({"name": "one", "kind": "echo"})),
    )
    .await;
    let batch = post(
        &app,
        &user,
        "/api/v1/tasks/batch",
        Some(&json!({"tasks": [
            {"name": "two", "kind": "echo"},
            {"name": "three", "kind": "noop"},
        ]})),
    )
    .await;
    let later = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    post(
        &app,
        &user,
        "/api/v1/tasks",
        Some(&json!({"name": "later", "kind": "noop", "scheduled_at": later})),
    )
    .await;
    post(
        &app,
        &user,
        "/api/v1/celery/test-task",
        Some(&json!({"message": "hi"})),
    )
    .await;
    let noop = batch["items"][1]["id"].as_str().unwrap();
    post(&app, &user, &format!("/api/v1/tasks/{noop}/cancel"), None).await;
    post(&app, &user, &format!("/api/v1/tasks/{noop}/retry"), None).await;
    let admin = app.create_user(Role::Admin).await;
    let schedule = post(
        &app,
        &admin,
        "/api/v1/schedules",
        Some(&json!({"name": "nightly", "cron": "0 3 * * *", "kind": "noop"})),
    )
    .await;
    let run_now = format!(
        "/api/v1/schedules/{}/run-now",
        schedule["id"].as_str().unwrap()
    );
    post(&app, &admin, &run_now, None).await;

    app.announce_worker("metrics-test-worker", Queue::Email)
        .await;
    let ws = app.address.replacen("http://", "ws://", 1);
    let url = format!("{ws}/ws?token={}", user.token);
    let (_first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (_second, _) = tokio_tungstenite::connect_async(&url).await.unwrap();

    // A socket counts once its session starts, a moment after the upgrade.
    let m = Scrape::fetch_until(
        &format!("{}/metrics", app.metrics_address),
        Duration::from_secs(10),
        |m| m.value("keel_ws_connections", &[]) == Some(2.0),
    )
    .await;
    let text = m.text();

    let http = |method: &str, route: &str, status: &str| {
        let labels = [("method", method), ("route", route), ("status", status)];
        let count = m.value("keel_http_requests_total", &labels);
        let observed = m.value("keel_http_request_duration_seconds_count", &labels);
        assert_eq!(
            observed, count,
            "one latency per request: {method} {route} {status}"
        );
        count
    };
    // One case a line: (method, route, status, requests counted, why).
    #[rustfmt::skip]
    let counted = [
        ("GET", "/api/v1/users/me", "200", 3.0, ""),
        ("GET", "/api/v1/tasks/{id}", "404", 1.0, "the route template, not the path"),
        ("POST", "/api/v1/tasks", "201", 2.0, ""),
        ("POST", "/api/v1/tasks/batch", "201", 1.0, ""),
        ("POST", "/api/v1/celery/test-task", "201", 1.0, ""),
        ("POST", "/api/v1/schedules/{id}/run-now", "201", 1.0, ""),
        ("POST", "/api/v1/tasks/{id}/retry", "200", 1.0, ""),
        ("GET", "/ws", "101", 2.0, "upgrades are requests too"),
    ];
    for (method, route, status, count, why) in counted {
        assert_eq!(
            http(method, route, status),
            Some(count),
            "{method} {route} {status} {why}: {text}"
        );
    }
    assert!(!text.contains(&missing), "raw paths never become labels");

    let created = |kind| m.value("keel_tasks_created_total", &[("kind", kind)]);
    assert_eq!(
        created("echo"),
        Some(3.0),
        "single, batch and Celery alias: {text}"
    );
    assert_eq!(
        created("noop"),
        Some(3.0),
        "batch, scheduled and run-now; a retry is not a creation: {text}"
    );
    assert_eq!(
        m.value("keel_tasks_retried_total", &[("kind", "noop")]),
        Some(1.0),
        "{text}"
    );

    let depth = |state| m.value("keel_queue_depth", &[("queue", "tasks"), ("state", state)]);
    assert_eq!(
        depth("pending"),
        Some(5.0),
        "three echo, the retried noop and the run-now: {text}"
    );
    assert_eq!(
        depth("scheduled"),
        Some(1.0),
        "the noop due in an hour: {text}"
    );
    assert_eq!(depth("running"), Some(0.0), "{text}");
    let oldest = m
        .value("keel_queue_oldest_pending_seconds", &[("queue", "tasks")])
        .expect("the oldest pending task's age");
    assert!(
        (0.0..30.0).contains(&oldest),
        "waiting since this test began: {oldest}"
    );
    let redis = |queue, state| {
        m.value(
            "keel_queue_redis_jobs",
            &[("queue", queue), ("state", state)],
        )
    };
    assert_eq!(
        redis("tasks", "scheduled"),
        Some(7.0),
        "six creates and a retry pushed, none fetched: {text}"
    );
    assert_eq!(redis("tasks", "dead"), Some(0.0), "{text}");
    assert_eq!(redis("email", "scheduled"), Some(0.0), "{text}");
    assert_eq!(m.value("keel_workers_alive", &[]), Some(1.0), "{text}");
    assert_eq!(m.value("keel_ws_connections", &[]), Some(2.0), "{text}");

    assert_eq!(
        m.undescribed(),
        Vec::<&str>::new(),
        "every series has help text: {text}"
    );
}

#[tokio::test]
async fn metrics_are_not_on_the_public_port_but_on_the_metrics_port() {
    let app = spawn_app_with(&[]).await;
    let public = app.get("/metrics").await;
    assert_eq!(
        public.status(),
        StatusCode::NOT_FOUND,
        "nothing at /metrics on the API's port"
    );
    let on_metrics_port = |path: &str| {
        let url = format!("{}{path}", app.metrics_address);
        app.client.get(url).send()
    };
    let scrape = on_metrics_port("/metrics").await.unwrap();
    assert_eq!(scrape.status(), StatusCode::OK);
    let text = scrape.text().await.unwrap();
    assert!(
        text.contains("keel_queue_"),
        "the queue gauges are there: {text}"
    );
    let health = on_metrics_port("/health").await.unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "probes have /health there too"
    );
}
