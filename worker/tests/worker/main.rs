//! Integration tests of the `keel-worker` process, against real PostgreSQL and Redis.

mod email;
mod maintenance;
mod metrics;
mod pipeline;
mod tasks;

use std::time::Duration;

use keel_shared::{Config, RedisClient, process::Backbone, queue::Queue, workers};
use keel_testing::{self as testing, ChildGuard, TestDatabase};

use crate::pipeline::{WORKER_BIN, assert_stops_cleanly};

struct Started {
    worker: ChildGuard,
    port: u16,
    config: Config,
    _db: TestDatabase,
}

async fn start_worker(extra_env: &[(&str, &str)]) -> Started {
    let db = TestDatabase::create().await.unwrap();
    let prefix = testing::unique_redis_prefix();
    let port = testing::free_port();
    let mut command = testing::service_command(WORKER_BIN, &db.url, &prefix, port);
    command.envs(extra_env.iter().copied());
    let worker = ChildGuard::spawn(command);
    let config = testing::config(&db.url, &prefix, &[]);
    Started {
        worker,
        port,
        config,
        _db: db,
    }
}

#[tokio::test]
async fn a_worker_registers_serves_its_probes_and_leaves_on_sigterm() {
    let Started {
        mut worker,
        port,
        config,
        _db,
    } = start_worker(&[
        ("WORKER_QUEUES", "email,tasks"),
        ("WORKER_CONCURRENCY", "3"),
    ])
    .await;
    let base = format!("http://127.0.0.1:{port}");

    let body =
        testing::wait_for_status(&format!("{base}/health"), 200, Duration::from_secs(20)).await;
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["database"], "healthy");
    assert_eq!(health["redis"], "healthy");

    let redis = RedisClient::lazy(&config).unwrap();
    let cards = wait_for_cards(&redis, 1).await;
    let card = &cards[0];
    assert_eq!(card.pid, worker.pid());
    assert_eq!(card.queues, [Queue::Email, Queue::Tasks]);
    assert_eq!(card.concurrency, 3);
    for kind in ["noop", "echo", "sleep", "http_request"] {
        assert!(
            card.kinds.iter().any(|k| k == kind),
            "{kind} in {:?}",
            card.kinds
        );
    }
    assert!(
        !card.kinds.iter().any(|k| k == "abort"),
        "test-only kinds are not offered here"
    );
    assert!(
        card.id.contains(&worker.pid().to_string()),
        "the name carries the pid: {}",
        card.id
    );

    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    assert!(
        metrics.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert_eq!(
        reqwest::get(format!("{base}/live")).await.unwrap().status(),
        200
    );

    assert_stops_cleanly(&mut worker, "TERM", Duration::from_secs(15)).await;
    assert!(
        workers::list_alive(&redis).await.unwrap().is_empty(),
        "a stopped worker leaves the registry"
    );
}

#[tokio::test]
async fn two_workers_get_distinct_names() {
    let first = start_worker(&[]).await;
    let redis = RedisClient::lazy(&first.config).unwrap();
    // A second process on the same prefix and database.
    let _second = ChildGuard::spawn(testing::service_command(
        WORKER_BIN,
        &first._db.url,
        &first.config.redis.prefix,
        testing::free_port(),
    ));

    let cards = wait_for_cards(&redis, 2).await;
    assert_ne!(cards[0].id, cards[1].id);
}

#[tokio::test]
async fn background_connections_plan_each_statement_for_its_arguments() {
    let db = TestDatabase::create().await.unwrap();
    let config = testing::config(&db.url, &testing::unique_redis_prefix(), &[]);
    // What `keel-worker` and `keel-scheduler` stand on.
    let backbone = Backbone::connect(&config, testing::free_port())
        .await
        .unwrap();
    let settings = |pool: sqlx::PgPool| async move {
        sqlx::query_as::<_, (String, String)>(
            "SELECT current_setting('plan_cache_mode'), current_setting('random_page_cost')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    assert_eq!(
        settings(backbone.db.clone()).await,
        ("force_custom_plan".to_owned(), "1.1".to_owned())
    );
    // The API's pool keeps the server's own planning.
    let api = keel_shared::db::connect(&config).await.unwrap();
    assert_eq!(settings(api).await.0, "auto");
    // A setting the operator chose stands.
    let url = format!("{}?options=-c%20random_page_cost%3D2", db.url);
    let chosen = testing::config(&url, &config.redis.prefix, &[]);
    let pool = keel_shared::db::connect_with(&chosen, keel_shared::db::Plans::PerCall)
        .await
        .unwrap();
    assert_eq!(
        settings(pool).await,
        ("force_custom_plan".to_owned(), "2".to_owned())
    );
}

async fn wait_for_cards(redis: &RedisClient, n: usize) -> Vec<workers::WorkerCard> {
    for _ in 0..100 {
        let cards = workers::list_alive(redis).await.unwrap();
        if cards.len() >= n {
            return cards;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} workers never registered");
}

/// Runs `keel-worker` with `env` and `args` until it exits: its exit code
/// and what it wrote to stderr.
fn run_to_exit(env: &[(&str, &str)], args: &[&str]) -> (Option<i32>, String) {
    let output = testing::command(WORKER_BIN)
        .envs(env.iter().copied())
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code(), err)
}

#[tokio::test]
async fn an_unreachable_postgres_stops_the_worker_with_exit_1() {
    let url = testing::unreachable_database_url();
    let (code, err) = run_to_exit(&[("DATABASE_URL", &url)], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach PostgreSQL"), "{err}");
}

#[tokio::test]
async fn an_unreachable_redis_stops_the_worker_with_exit_1() {
    let db = TestDatabase::create().await.unwrap();
    let redis = testing::unreachable_redis_url();
    let (code, err) = run_to_exit(&[("DATABASE_URL", &db.url), ("REDIS_URL", &redis)], &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot reach Redis"), "{err}");
}

#[test]
fn bad_worker_settings_stop_with_exit_2_naming_the_variable() {
    for (variable, value) in [
        ("WORKER_CONCURRENCY", "0"),
        ("WORKER_QUEUES", "email,bogus"),
        ("METRICS_PORT", "x"),
        ("DATABASE_URL", "not a url"),
        ("REDIS_URL", "not a url"),
    ] {
        let (code, err) = run_to_exit(&[(variable, value)], &[]);
        assert_eq!(code, Some(2), "{variable}={value}: {err}");
        assert!(err.contains(variable), "{variable} is named: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    }
}

#[test]
fn flags_override_the_environment() {
    // `--concurrency` beats WORKER_CONCURRENCY: a bad env value is not read at all.
    let url = testing::unreachable_database_url();
    let (code, err) = run_to_exit(
        &[("WORKER_CONCURRENCY", "0"), ("DATABASE_URL", &url)],
        &["--concurrency", "8", "--queues", "tasks"],
    );
    assert_eq!(
        code,
        Some(1),
        "configuration passed; the database is down: {err}"
    );
}
