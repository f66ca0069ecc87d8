//! Tasks through HTTP and a real worker: what a client sees from `POST
//! /tasks` to the completed row. The worker runs in this process (the same
//! code as `keel-worker`, on the app's database and Redis prefix); the
//! worker's own tests run it as separate processes.

use std::time::Duration;

use keel_shared::{domain::Role, process::Service as _};
use keel_worker::app::Worker;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestApp, TestUser, spawn_app_with};

pub struct Stack {
    pub app: TestApp,
    pub worker: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.worker.cancel();
    }
}

async fn stack() -> Stack {
    stack_with(&["--rate-limit-enabled", "false"]).await
}

/// The API (with `extra` flags) and a worker that mail through `smtp`,
/// links built on `http://keel.test`.
pub async fn mail_stack(smtp: &keel_testing::SmtpServer, extra: &[&str]) -> Stack {
    let port = smtp.port.to_string();
    let mut flags = vec![
        "--smtp-host",
        "127.0.0.1",
        "--smtp-port",
        &port,
        "--smtp-tls",
        "none",
        "--emails-from-email",
        "keel@example.com",
        "--app-base-url",
        "http://keel.test",
    ];
    flags.extend_from_slice(extra);
    stack_with(&flags).await
}

/// A [`mail_stack`] without the general rate limit (its tests sign in
/// many times), and the SMTP server it mails to; the stack drops first.
pub async fn unlimited_mail_stack() -> (Stack, keel_testing::SmtpServer) {
    let smtp = keel_testing::SmtpServer::start().await;
    let stack = mail_stack(&smtp, &["--rate-limit-enabled", "false"]).await;
    (stack, smtp)
}

/// The API with `flags`, and a worker on its database and Redis prefix.
pub async fn stack_with(flags: &[&str]) -> Stack {
    let app = spawn_app_with(flags).await;
    let mut config = app.config.clone();
    config.process.metrics_port = Some(0);
    config.tasks.retry_base_ms = 100;
    let worker = Worker::build(&config).await.expect("the worker starts");
    let stop = worker.shutdown_token();
    tokio::spawn(worker.run_until_stopped());
    Stack { app, worker: stop }
}

pub async fn post(app: &TestApp, path: &str, user: &TestUser, body: &Value) -> Value {
    let response = app.post_as(path, &user.token, body).await;
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

/// A task of `user`'s created over HTTP from `body`, run by the worker
/// until it reaches `status`: its id and its state then.
async fn run_until(app: &TestApp, user: &TestUser, body: &Value, status: &str) -> (String, Value) {
    let task = post(app, "/api/v1/tasks", user, body).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let state = wait_for(app, user, &id, status).await;
    (id, state)
}

/// The `to_status` of each entry of a task's history, oldest first.
fn history(detail: &Value) -> Vec<&str> {
    detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to_status"].as_str().unwrap())
        .collect()
}

/// Polls `GET /tasks/{id}/status` until `status`.
pub async fn wait_for(app: &TestApp, user: &TestUser, id: &str, status: &str) -> Value {
    for _ in 0..300 {
        let response = app
            .get_as(&format!("/api/v1/tasks/{id}/status"), &user.token)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        if body["status"] == status {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} never reached {status}");
}

#[tokio::test]
async fn a_task_created_over_http_runs_on_a_worker_and_reports_back() {
    let Stack { app, worker: _w } = &stack().await;
    let user = app.create_user(Role::User).await;
    let greet = json!({"name": "greet", "kind": "echo", "payload": {"hello": "world"}});
    let (id, state) = run_until(app, &user, &greet, "completed").await;
    assert_eq!(state["attempts"], 1);

    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(detail["result"], json!({"hello": "world"}));
    assert_eq!(detail["progress"], 100);
    assert_eq!(history(&detail), ["pending", "running", "completed"]);

    // The Celery-era client sees the same run.
    let celery = post(
        app,
        "/api/v1/celery/test-task",
        &user,
        &json!({"message": "hi"}),
    )
    .await;
    let celery_id = celery["task_id"].as_str().unwrap();
    wait_for(app, &user, celery_id, "completed").await;
    let status = app
        .get_json(
            &format!("/api/v1/celery/task-status/{celery_id}"),
            &user.token,
        )
        .await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["result"], json!({"message": "hi"}));
}

#[tokio::test]
async fn a_failed_task_retried_over_http_runs_again_with_fresh_attempts() {
    let Stack { app, worker: _w } = &stack().await;
    let user = app.create_user(Role::User).await;
    let doomed = json!({"name": "doomed", "kind": "fail", "payload": {"message": "nope"}, "max_attempts": 2});
    let (id, failed) = run_until(app, &user, &doomed, "failed").await;
    assert_eq!(failed["attempts"], 2);

    let retried = post(app, &format!("/api/v1/tasks/{id}/retry"), &user, &json!({})).await;
    assert_eq!(retried["status"], "pending");
    assert_eq!(retried["attempts"], 0);
    let again = wait_for(app, &user, &id, "failed").await;
    assert_eq!(again["attempts"], 2, "a retry gets a fresh set of attempts");

    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(detail["error"], "nope");
    let failures = history(&detail)
        .into_iter()
        .filter(|to| *to == "failed")
        .count();
    assert_eq!(failures, 2, "{detail}");
}
