//! The example kind end to end: `greet-api` and `greet-worker`, built in
//! this crate with its registry, as processes on a test database and Redis
//! prefix; a client creates a `greet` task over HTTP and reads its result.
//! Before the worker that knows the kind starts, Keel's own `keel-worker`
//! (which does not) holds the task back instead of failing it: a rolling
//! deploy loses nothing.

use std::time::Duration;

use keel_testing::{self as testing, ChildGuard};
use reqwest::StatusCode;
use serde_json::{Value, json};

const API_BIN: &str = env!("CARGO_BIN_EXE_greet-api");
const WORKER_BIN: &str = env!("CARGO_BIN_EXE_greet-worker");
const LONG: Duration = Duration::from_secs(30);

/// `GET {base}{path}` with `token`, as JSON.
async fn get(client: &reqwest::Client, base: &str, token: &str, path: &str) -> Value {
    client
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_kind_from_this_crate_runs_through_the_api_and_a_worker_built_here() {
    let db = testing::TestDatabase::create().await.unwrap();
    let prefix = testing::unique_redis_prefix();
    let port = testing::free_port();
    let mut api = testing::command(API_BIN);
    api.env("DATABASE_URL", &db.url)
        .env("REDIS_URL", testing::redis_url())
        .env("REDIS_PREFIX", &prefix)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("RATE_LIMIT_ENABLED", "false");
    let _api = ChildGuard::spawn(api);
    let base = format!("http://127.0.0.1:{port}");
    testing::wait_for_status(&format!("{base}/ready"), 200, LONG).await;
    // Keel's own worker first: it does not know `greet`.
    let plain_bin = std::path::Path::new(WORKER_BIN).with_file_name("keel-worker");
    let plain = testing::service_command(
        plain_bin.to_str().unwrap(),
        &db.url,
        &prefix,
        testing::free_port(),
    );
    let mut plain = ChildGuard::spawn(plain);

    let client = reqwest::Client::new();
    let token = testing::sign_up(&client, &base).await;
    let kinds = get(&client, &base, &token, "/api/v1/tasks/kinds").await;
    let greet = kinds
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "greet")
        .expect("the API offers the crate's kind");
    let schema = &greet["payload_schema"];
    assert_eq!(schema["properties"]["name"]["type"], "string", "{schema}");
    assert_eq!(
        schema["properties"]["name"]["maxLength"], 100,
        "derived from the type"
    );
    assert_eq!(schema["required"], json!(["name"]));
    assert!(
        kinds
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["name"] == "echo"),
        "beside Keel's own kinds"
    );

    // A bad payload is refused naming its field, as for a built-in kind.
    let bad = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(&token)
        .json(&json!({"name": "g", "kind": "greet", "payload": {"name": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = bad.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "payload.name", "{problem}");

    let created: Value = client
        .post(format!("{base}/api/v1/tasks"))
        .bearer_auth(&token)
        .json(&json!({"name": "hello", "kind": "greet", "payload": {"name": "Ada", "shout": true}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().expect("a task").to_owned();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let task = get(&client, &base, &token, &format!("/api/v1/tasks/{id}")).await;
        let tried = task["history"]
            .as_array()
            .is_some_and(|h| h.iter().any(|e| e["to_status"] == "running"));
        if tried && task["status"] != "running" {
            assert_eq!(task["status"], "pending", "held back, not failed: {task}");
            assert_eq!(task["attempts"], 0, "no attempt spent: {task}");
            assert!(task["started_at"].is_null(), "it has not started: {task}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never tried: {task}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    plain.signal("TERM");
    plain.wait_exit(LONG).await;
    let worker = testing::service_command(WORKER_BIN, &db.url, &prefix, testing::free_port());
    let _worker = ChildGuard::spawn(worker);
    let deadline = tokio::time::Instant::now() + LONG;
    let task = loop {
        let task = get(&client, &base, &token, &format!("/api/v1/tasks/{id}")).await;
        if task["status"] == "completed" {
            break task;
        }
        assert!(tokio::time::Instant::now() < deadline, "not run: {task}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(task["result"], json!({"greeting": "HELLO, ADA!"}));
    assert_eq!(task["attempts"], 1);
}
