//! Stopping: readiness turns 503 first, in-flight requests finish, exit 0.

use std::time::{Duration, Instant};

use keel_testing::{self as testing, ChildGuard, TestDatabase};
use reqwest::StatusCode;

use crate::helpers::{API_BIN, SlowProxy, assert_problem, postgres_addr, spawn_app_with};

#[tokio::test]
async fn readiness_turns_503_while_draining_and_liveness_stays_200() {
    let app = spawn_app_with(&["--shutdown-drain-seconds", "2"]).await;
    assert_eq!(app.ready().await.status(), StatusCode::OK);

    app.shutdown.cancel();
    let problem = assert_problem(
        app.ready().await,
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
    )
    .await;
    assert_eq!(problem.errors.unwrap()[0].field, "lifecycle");
    assert_eq!(
        app.live().await.status(),
        StatusCode::OK,
        "draining is not dead"
    );

    let live = app.url("/live");
    let stopped = tokio::time::timeout(Duration::from_secs(10), app.server).await;
    assert!(
        matches!(stopped, Ok(Ok(Ok(())))),
        "the server stops after draining: {stopped:?}"
    );
    assert!(
        reqwest::get(live).await.is_err(),
        "and no longer accepts connections"
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let db = TestDatabase::create().await.unwrap();
    // The real database behind a proxy that can slow it down, so a request
    // is surely in flight when the signal arrives.
    let proxy = SlowProxy::start(postgres_addr()).await;
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    let port = testing::free_port().to_string();
    let mut api = ChildGuard::spawn({
        let mut command = testing::command(API_BIN);
        command.envs([
            ("DATABASE_URL", url.as_str()),
            ("REDIS_URL", &testing::redis_url()),
            ("REDIS_PREFIX", &testing::unique_redis_prefix()),
            ("HOST", "127.0.0.1"),
            ("PORT", &port),
            ("SHUTDOWN_DRAIN_SECONDS", "1"),
            ("SHUTDOWN_GRACE_SECONDS", "10"),
        ]);
        command
    });
    let base = format!("http://127.0.0.1:{port}");
    let health = format!("{base}/api/v1/health/db");
    testing::wait_for_status(&health, 200, Duration::from_secs(20)).await;

    proxy.set_delay(Duration::from_millis(800));
    let started = Instant::now();
    let in_flight = tokio::spawn(reqwest::get(format!("{base}/api/v1/health/db")));
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.signal("TERM");

    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "it really was in flight"
    );
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap()["status"],
        "healthy"
    );

    let status = api
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("keel-api exits after draining");
    assert_eq!(
        status.code(),
        Some(0),
        "a clean stop exits 0: {}",
        api.stderr()
    );
}
