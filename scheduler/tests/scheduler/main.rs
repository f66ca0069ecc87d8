//! Integration tests of the `keel-scheduler` process, against real PostgreSQL and Redis.

use std::time::Duration;

use keel_testing::{self as testing, ChildGuard, TestDatabase};

mod crashes;
mod faults;
mod metrics;
mod outages;
mod reconcile;
mod skew;
mod stack;
mod ticks;

pub const SCHEDULER_BIN: &str = env!("CARGO_BIN_EXE_keel-scheduler");

#[tokio::test]
async fn the_scheduler_serves_its_probes_and_stops_cleanly_on_sigint() {
    let db = TestDatabase::create().await.unwrap();
    let port = testing::free_port();
    let command = testing::service_command(
        SCHEDULER_BIN,
        &db.url,
        &testing::unique_redis_prefix(),
        port,
    );
    let mut scheduler = ChildGuard::spawn(command);
    let base = format!("http://127.0.0.1:{port}");

    let body =
        testing::wait_for_status(&format!("{base}/health"), 200, Duration::from_secs(20)).await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["database"], "healthy");
    assert_eq!(health["redis"], "healthy");
    assert_eq!(
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(format!("{base}/nope")).await.unwrap().status(),
        404
    );

    scheduler.signal("INT");
    let status = scheduler
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the scheduler stops");
    assert_eq!(status.code(), Some(0), "{}", scheduler.stderr());
}

/// Runs `keel-scheduler` with `env` until it exits: its exit code and what
/// it wrote to stderr.
fn run_to_exit(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = testing::command(SCHEDULER_BIN)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), err)
}

#[tokio::test]
async fn an_unreachable_postgres_stops_the_scheduler_with_exit_1() {
    let url = testing::unreachable_database_url();
    let (code, err) = run_to_exit(&[("DATABASE_URL", &url)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_scheduler_with_exit_1() {
    let db = TestDatabase::create().await.unwrap();
    let redis = testing::unreachable_redis_url();
    let (code, err) = run_to_exit(&[("DATABASE_URL", &db.url), ("REDIS_URL", &redis)]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach Redis"), "{err}");
}

#[test]
fn a_bad_value_stops_the_scheduler_with_exit_2_naming_it() {
    for (variable, value) in [
        ("SHUTDOWN_GRACE_SECONDS", "0"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "redis://"),
    ] {
        let (code, err) = run_to_exit(&[(variable, value)]);
        assert_eq!(code, Some(2), "{variable}={value}: {err}");
        assert!(err.contains(variable), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[tokio::test]
async fn log_format_json_writes_one_json_object_per_line() {
    let db = TestDatabase::create().await.unwrap();
    let port = testing::free_port();
    let mut command = testing::service_command(
        SCHEDULER_BIN,
        &db.url,
        &testing::unique_redis_prefix(),
        port,
    );
    command.env("LOG_FORMAT", "json");
    let mut scheduler = ChildGuard::spawn(command);
    testing::wait_for_status(
        &format!("http://127.0.0.1:{port}/live"),
        200,
        Duration::from_secs(20),
    )
    .await;
    scheduler.signal("TERM");
    scheduler
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the scheduler stops");

    let stdout = scheduler.stdout();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "keel-scheduler started"),
        "{stdout}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string()),
        "{stdout}"
    );
}
