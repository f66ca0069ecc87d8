//! `/api/v1/tasks`: creating (one, batches, idempotent), validation, the cap,
//! ownership, listing, cancel and retry, kinds, Redis down, and the Celery
//! aliases. No worker runs: a job "queued" is one found in Redis.

use chrono::{Duration, Utc};
use keel_shared::{
    db::{
        self,
        tasks::{Finish, Outcome, TaskStatus},
    },
    domain::Role,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::{
    helpers::{
        TestApp, TestUser, assert_invalid, assert_names, assert_problem, fields, send_raw,
        spawn_app_with, spawn_app_without_redis,
    },
    refusals::{
        FORBIDDEN, MALFORMED_JSON, NOT_AUTHENTICATED, NOT_FOUND, Refusal, SERVICE_UNAVAILABLE,
        UNSUPPORTED_MEDIA_TYPE, assert_refused,
    },
};

/// Many requests per test: the general rate limit would get in the way.
async fn spawn() -> TestApp {
    spawn_app_with(&["--rate-limit-enabled", "false"]).await
}

/// [`spawn`] with at most `cap` unfinished tasks per user.
async fn spawn_capped(cap: usize) -> TestApp {
    let cap = cap.to_string();
    spawn_app_with(&[
        "--rate-limit-enabled",
        "false",
        "--max-unfinished-tasks-per-user",
        &cap,
    ])
    .await
}

async fn set_status(app: &TestApp, id: &str, status: &str) {
    sqlx::query("UPDATE tasks SET status = $2 WHERE id = $1::uuid")
        .bind(id)
        .bind(status)
        .execute(app.pool())
        .await
        .unwrap();
}

async fn count_tasks(app: &TestApp) -> i64 {
    app.scalar("SELECT count(*) FROM tasks").await
}

/// The `enqueued_at` of task `id`: set once its job is handed to Redis.
async fn enqueued_at(app: &TestApp, id: &str) -> Option<chrono::DateTime<Utc>> {
    app.scalar_with("SELECT enqueued_at FROM tasks WHERE id = $1::uuid", id)
        .await
}

/// A create refused by the cap on unfinished tasks.
const CAPPED: Refusal = (StatusCode::TOO_MANY_REQUESTS, "too_many_unfinished_tasks");
/// An idempotency key sent again with another request.
const KEY_REUSED: Refusal = (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch");

#[tokio::test]
async fn create_with_defaults_answers_201_pending_and_pushes_the_job_to_redis() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;

    let response = app
        .create_task(&user.token, &json!({"name": "first"}))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let task: Value = response.json().await.unwrap();
    let id = task["id"].as_str().unwrap();
    assert_eq!(location, format!("/api/v1/tasks/{id}"));
    assert_eq!(task["status"], "pending");
    assert_eq!(task["kind"], "noop");
    assert_eq!(task["payload"], json!({}));
    assert_eq!(task["max_attempts"], 3);
    assert_eq!(task["timeout_seconds"], 300, "the configured default");
    assert_eq!(task["priority"], 0);
    assert_eq!(task["attempts"], 0);
    assert_eq!(task["owner_id"], user.user.id.to_string());
    assert!(task.get("lease_owner").is_none() && task.get("enqueued_at").is_none());

    assert_eq!(app.scheduled_task_jobs_reaching(1).await, 1);
    assert_eq!(
        app.pushes_of_reaching(id, 1).await,
        1,
        "the job names the task"
    );
    assert!(
        enqueued_at(&app, id).await.is_some(),
        "a pushed task is marked enqueued"
    );
}

#[tokio::test]
async fn create_takes_every_field_and_a_trailing_slash() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let at = Utc::now() + Duration::hours(1);
    let body = json!({
        "name": "nap", "kind": "sleep", "payload": {"ms": 5},
        "scheduled_at": at, "max_attempts": 7, "timeout_seconds": 60, "priority": -5,
    });
    let response = app.post_as("/api/v1/tasks/", &user.token, &body).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["kind"], "sleep");
    assert_eq!(task["payload"], json!({"ms": 5}));
    assert_eq!(task["max_attempts"], 7);
    assert_eq!(task["timeout_seconds"], 60);
    assert_eq!(task["priority"], -5);
    let scheduled: chrono::DateTime<Utc> = task["scheduled_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (scheduled - at).num_milliseconds().abs() < 1000,
        "{scheduled} vs {at}"
    );
}

/// Whole numbers written with a fraction are integers, as JSON Schema has
/// it; and a payload's numbers, even at the edge of `f64`, read back from
/// PostgreSQL (which prints them in full) once stored.
#[tokio::test]
async fn integers_may_be_written_79_0_and_payload_numbers_survive_storage() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let task = app
        .created_task(
            &user.token,
            &json!({
                "name": "nap", "kind": "sleep", "payload": {"ms": 5.0},
                "max_attempts": 7.0, "timeout_seconds": 6e1, "priority": -5.0,
            }),
        )
        .await;
    assert_eq!(
        (
            &task["max_attempts"],
            &task["timeout_seconds"],
            &task["priority"]
        ),
        (&json!(7), &json!(60), &json!(-5))
    );
    let fraction = json!({"name": "n", "priority": 1.5});
    assert_invalid(app.create_task(&user.token, &fraction).await).await;

    let edge = json!({"max": f64::MAX, "min": -f64::MAX, "tiny": 5e-324, "big": 1e20});
    let task = app
        .created_task(
            &user.token,
            &json!({"name": "edge", "kind": "echo", "payload": edge}),
        )
        .await;
    let id = task["id"].as_str().unwrap();
    let read = app
        .get_as(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(
        read.status(),
        StatusCode::OK,
        "the stored payload reads back"
    );
    assert_eq!(read.json::<Value>().await.unwrap()["payload"], edge);
    let list = app.get_as("/api/v1/tasks", &user.token).await;
    assert_eq!(list.status(), StatusCode::OK, "and so does the list");
}

#[tokio::test]
async fn a_scheduled_at_in_the_past_means_now() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let task = app
        .created_task(
            &user.token,
            &json!({"name": "late", "scheduled_at": Utc::now() - Duration::days(3)}),
        )
        .await;
    let scheduled: chrono::DateTime<Utc> = task["scheduled_at"].as_str().unwrap().parse().unwrap();
    assert!(
        (Utc::now() - scheduled).num_seconds() < 60,
        "scheduled_at {scheduled} is about now"
    );
}

#[tokio::test]
async fn invalid_tasks_are_422_naming_the_field() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    // One case a line: (body, the field named, why it is refused).
    #[rustfmt::skip]
    let cases = [
        (json!({"name": "x", "kind": "nope"}), "kind", "unknown kind"),
        (json!({"name": "x", "kind": "sleep", "payload": {"ms": "soon"}}), "payload.ms", "a payload field has the wrong type"),
        (json!({"name": "x", "kind": "sleep", "payload": {"ms": 99_999_999_999_u64}}), "payload.ms", "a payload field is out of range"),
        (json!({"name": "x", "kind": "sleep"}), "payload", "the payload as a whole lacks a field"),
        (json!({"name": "x", "max_attempts": 0}), "max_attempts", "max_attempts below 1"),
        (json!({"name": "x", "max_attempts": 101}), "max_attempts", "max_attempts above 100"),
        (json!({"name": "x", "timeout_seconds": 86_401}), "timeout_seconds", "timeout above a day"),
        (json!({"name": "x", "priority": 101}), "priority", "priority above 100"),
        (json!({"name": "x".repeat(201)}), "name", "name over 200 characters"),
        (json!({"name": "  "}), "name", "a blank name"),
        (json!({}), "name", "no name"),
        (json!({"name": "x", "role": "admin"}), "role", "an unknown field"),
    ];
    for (body, field, reason) in cases {
        let problem = assert_invalid(app.create_task(&user.token, &body).await).await;
        assert_names(&problem, field, reason);
    }
    assert_eq!(count_tasks(&app).await, 0, "nothing was created");
}

#[tokio::test]
async fn malformed_json_is_400_and_another_content_type_415() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    for path in ["/api/v1/tasks", "/api/v1/tasks/batch"] {
        let post = || app.client.post(app.url(path)).bearer_auth(&user.token);
        let response = send_raw(post(), "application/json", "{oops}").await;
        assert_refused(response, MALFORMED_JSON).await;
        let response = send_raw(post(), "text/plain", r#"{"name": "x"}"#).await;
        assert_refused(response, UNSUPPORTED_MEDIA_TYPE).await;
    }
}

#[tokio::test]
async fn tasks_need_a_caller_and_accept_an_api_key() {
    let app = spawn().await;
    let response = app.post_json("/api/v1/tasks", &json!({"name": "x"})).await;
    assert_refused(response, NOT_AUTHENTICATED).await;

    let user = app.create_user(Role::User).await;
    let key = app.api_key(&user, "tasks").await;
    let body = json!({"name": "by key"});
    let response = app
        .send_with_key(Method::POST, "/api/v1/tasks", &key, Some(&body))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let task: Value = response.json().await.unwrap();
    assert_eq!(task["owner_id"], user.user.id.to_string());
}

#[tokio::test]
async fn another_users_task_is_404_everywhere_but_an_admin_sees_it() {
    let app = spawn().await;
    let owner = app.create_user(Role::User).await;
    let other = app.create_user(Role::User).await;
    let admin = app.create_user(Role::Admin).await;
    let task = app
        .created_task(&owner.token, &json!({"name": "mine"}))
        .await;
    let id = task["id"].as_str().unwrap();

    for (method, path) in [
        (Method::GET, format!("/api/v1/tasks/{id}")),
        (Method::GET, format!("/api/v1/tasks/{id}/status")),
        (Method::POST, format!("/api/v1/tasks/{id}/cancel")),
        (Method::POST, format!("/api/v1/tasks/{id}/retry")),
        (Method::GET, format!("/api/v1/celery/task-status/{id}")),
    ] {
        let response = app.send(method.clone(), &path, &other.token, None).await;
        assert_refused(response, NOT_FOUND).await;
        let response = app.send(method.clone(), &path, &owner.token, None).await;
        assert_ne!(
            response.status(),
            StatusCode::NOT_FOUND,
            "{method} {path} for the owner"
        );
    }
    let response = app
        .get_as(&format!("/api/v1/tasks/{id}"), &admin.token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let missing = uuid::Uuid::now_v7();
    for path in [
        format!("/api/v1/tasks/{missing}"),
        "/api/v1/tasks/not-a-uuid".to_owned(),
    ] {
        assert_refused(app.get_as(&path, &owner.token).await, NOT_FOUND).await;
    }
}

#[tokio::test]
async fn get_shows_the_task_with_its_history_and_status_the_short_form() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let task = app.created_task(&user.token, &json!({"name": "h"})).await;
    let id = task["id"].as_str().unwrap();

    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(detail["id"], task["id"]);
    assert_eq!(detail["name"], "h");
    let history = detail["history"].as_array().expect("a history");
    assert!(!history.is_empty(), "the creation is recorded: {detail}");
    assert_eq!(history[0]["to_status"], "pending");

    let response = app
        .get_as(&format!("/api/v1/tasks/{id}/status"), &user.token)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let status: Value = response.json().await.unwrap();
    let mut keys: Vec<_> = status.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["attempts", "id", "progress", "status", "updated_at"]);
    assert_eq!(status["status"], "pending");
}

#[tokio::test]
async fn lists_are_own_tasks_newest_first_with_filters_and_pages() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let other = app.create_user(Role::User).await;
    let admin = app.create_user(Role::Admin).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let kind = if i % 2 == 0 { "noop" } else { "echo" };
        let task = app
            .created_task(&user.token, &json!({"name": format!("t{i}"), "kind": kind}))
            .await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let theirs = app
        .created_task(&other.token, &json!({"name": "theirs"}))
        .await;
    set_status(&app, &ids[0], "failed").await;

    let page = app.get_json("/api/v1/tasks?size=2", &user.token).await;
    assert_eq!(page["total"], 5, "only the caller's own");
    assert_eq!(page["pages"], 3);
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert_eq!(page["items"][0]["id"], ids[4].as_str(), "newest first");
    assert_eq!(page["items"][1]["id"], ids[3].as_str());
    let last = app
        .get_json("/api/v1/tasks?size=2&page=3", &user.token)
        .await;
    assert_eq!(last["items"][0]["id"], ids[0].as_str());

    let echo = app.get_json("/api/v1/tasks?kind=echo", &user.token).await;
    assert_eq!(echo["total"], 2);
    let failed = app
        .get_json("/api/v1/tasks?status=failed", &user.token)
        .await;
    assert_eq!(failed["total"], 1);
    assert_eq!(failed["items"][0]["id"], ids[0].as_str());

    let sleeping = app
        .get_as("/api/v1/tasks?status=sleeping", &user.token)
        .await;
    assert_eq!(fields(&assert_invalid(sleeping).await), ["status"]);
    assert_invalid(app.get_as("/api/v1/tasks?size=101", &user.token).await).await;

    // A user may name themself, not anyone else.
    let of = |who: &TestUser| format!("/api/v1/tasks?user_id={}", who.user.id);
    assert_eq!(app.get_json(&of(&user), &user.token).await["total"], 5);
    let response = app.get_as(&of(&other), &user.token).await;
    assert_refused(response, FORBIDDEN).await;

    let all = app.get_json("/api/v1/tasks", &admin.token).await;
    assert_eq!(all["total"], 6, "an admin sees everybody's");
    let filtered = app.get_json(&of(&other), &admin.token).await;
    assert_eq!(filtered["total"], 1);
    assert_eq!(filtered["items"][0]["id"], theirs["id"]);
}

#[tokio::test]
async fn cancel_a_pending_task_once_then_409() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let task = app.created_task(&user.token, &json!({"name": "c"})).await;
    let id = task["id"].as_str().unwrap();
    let path = format!("/api/v1/tasks/{id}/cancel");

    let response = app.post_as(&path, &user.token, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].is_string());

    let again = app.post_as(&path, &user.token, None).await;
    assert_problem(again, StatusCode::CONFLICT, "task_not_cancellable").await;

    let finished = app.created_task(&user.token, &json!({"name": "f"})).await;
    let finished_id = finished["id"].as_str().unwrap();
    set_status(&app, finished_id, "completed").await;
    let cancel = format!("/api/v1/tasks/{finished_id}/cancel");
    let response = app.post_as(&cancel, &user.token, None).await;
    let problem = assert_problem(response, StatusCode::CONFLICT, "task_not_cancellable").await;
    assert!(problem.detail.contains("completed"), "{}", problem.detail);
}

/// Makes task `id` look claimed by a worker `owner` whose lease ends
/// `expires_in_seconds` from now (negative: already over).
async fn lease_to(app: &TestApp, id: &str, owner: &str, expires_in_seconds: i32) {
    sqlx::query(
        "UPDATE tasks SET status = 'running', attempts = 1, started_at = now(), \
             lease_owner = $2, lease_expires_at = now() + $3 * interval '1 second' \
         WHERE id = $1::uuid",
    )
    .bind(id)
    .bind(owner)
    .bind(expires_in_seconds)
    .execute(app.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn cancel_of_a_running_task_whose_worker_is_gone_ends_it_without_the_worker() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;

    // A worker that died: its lease is over, so the API cancels the row itself,
    // and the dead worker's late write is fenced off.
    let orphan = app.created_task(&user.token, &json!({"name": "o"})).await;
    let orphan_id = orphan["id"].as_str().unwrap();
    lease_to(&app, orphan_id, "dead/1", -1).await;
    let response = app
        .post_as(
            &format!("/api/v1/tasks/{orphan_id}/cancel"),
            &user.token,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["error"], "cancelled while running");
    let late = Finish {
        id: orphan_id.parse().unwrap(),
        token: "dead/1".into(),
        outcome: Outcome::Completed(json!({"late": true})),
    };
    let written = db::tasks::finish(app.pool(), "dead", &[late])
        .await
        .unwrap();
    assert!(
        written.is_empty(),
        "a cancelled row takes no write from its old lease"
    );

    // A worker that lives but never answers (stalled): after waiting for it,
    // the API says the stop is under way (202), and the request stays on the row,
    // so the reconciler ends it `cancelled`, not `retrying`, once the lease runs out.
    let stalled = app.created_task(&user.token, &json!({"name": "s"})).await;
    let stalled_id = stalled["id"].as_str().unwrap();
    lease_to(&app, stalled_id, "stalled/1", 60).await;
    let response = app
        .post_as(
            &format!("/api/v1/tasks/{stalled_id}/cancel"),
            &user.token,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let requested: Value = response.json().await.unwrap();
    assert_eq!(requested["status"], "running");
    lease_to(&app, stalled_id, "stalled/1", -10).await;
    let retry = (
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(1),
    );
    let ended = db::tasks::expire_leases(app.pool(), std::time::Duration::ZERO, retry, 10)
        .await
        .unwrap();
    assert_eq!(ended.len(), 1);
    assert_eq!(ended[0].status, TaskStatus::Cancelled);
    assert_eq!(ended[0].error.as_deref(), Some("cancelled while running"));
}

#[tokio::test]
async fn retry_of_a_cancelled_task_makes_it_pending_and_pushes_it_again() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let task = app
        .created_task(&user.token, &json!({"name": "again"}))
        .await;
    let id = task["id"].as_str().unwrap();
    let retry = format!("/api/v1/tasks/{id}/retry");

    let early = app.post_as(&retry, &user.token, None).await;
    assert_problem(early, StatusCode::CONFLICT, "task_not_retryable").await;

    let cancel = format!("/api/v1/tasks/{id}/cancel");
    let cancelled = app.post_as(&cancel, &user.token, None).await;
    assert_eq!(cancelled.status(), StatusCode::OK);
    assert_eq!(app.pushes_of_reaching(id, 1).await, 1);

    let response = app.post_as(&retry, &user.token, None).await;
    assert_eq!(response.status(), StatusCode::OK);
    let retried: Value = response.json().await.unwrap();
    assert_eq!(retried["status"], "pending");
    assert_eq!(retried["attempts"], 0);
    assert!(retried["finished_at"].is_null());
    assert_eq!(
        app.pushes_of_reaching(id, 2).await,
        2,
        "a new job for the new run"
    );

    set_status(&app, id, "failed").await;
    let response = app.post_as(&retry, &user.token, None).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a failed task runs again too"
    );
}

#[tokio::test]
async fn kinds_lists_every_registered_kind_with_its_schema() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let response = app.get_as("/api/v1/tasks/kinds", &user.token).await;
    assert_eq!(response.status(), StatusCode::OK, "not taken for a task id");
    let kinds: Vec<Value> = response.json().await.unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k["name"].as_str().unwrap()).collect();
    for kind in ["noop", "echo", "sleep", "fail", "http_request"] {
        assert!(names.contains(&kind), "{kind} in {names:?}");
    }
    let offered: Vec<&str> = keel_shared::kinds::KINDS
        .iter()
        .filter(|k| !k.test_only)
        .map(|k| k.name)
        .collect();
    assert_eq!(
        names, offered,
        "every registered kind but the test-only ones"
    );
    for test_only in ["abort", "steady_sleep", "snooze"] {
        assert!(!names.contains(&test_only), "test-only kinds stay hidden");
    }
    let abort = app
        .create_task(&user.token, &json!({"name": "x", "kind": "abort"}))
        .await;
    assert_eq!(abort.status(), StatusCode::UNPROCESSABLE_ENTITY);
    for kind in &kinds {
        assert_eq!(kind["payload_schema"]["type"], "object", "{kind}");
        assert!(kind["description"].is_string() && kind["category"].is_string());
    }
}

#[tokio::test]
async fn an_http_request_may_not_set_host_or_framing_headers() {
    let app = spawn_app_with(&["--task-http-allowed-hosts", "hooks.example.com"]).await;
    let user = app.create_user(Role::User).await;
    for name in ["Host", "content-length", "Transfer-Encoding", "Connection"] {
        let body = json!({"name": "hook", "kind": "http_request", "payload": {
            "method": "POST", "url": "https://hooks.example.com/x", "headers": {name: "internal.example"}
        }});
        let problem = assert_invalid(app.create_task(&user.token, &body).await).await;
        assert_eq!(
            fields(&problem),
            [format!("payload.headers.{name}")],
            "{name}"
        );
    }
    let allowed = json!({"name": "hook", "kind": "http_request", "payload": {
        "method": "POST", "url": "https://hooks.example.com/x", "headers": {"X-Signature": "s"}
    }});
    assert_eq!(
        app.create_task(&user.token, &allowed).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn a_batch_creates_every_task_in_order_and_pushes_them() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let tasks = json!({"tasks": [
        {"name": "a"},
        {"name": "b", "kind": "echo", "payload": {"x": 1}},
        {"name": "c", "kind": "sleep", "payload": {"ms": 1}},
    ]});
    let response = batch(&app, &user, &tasks).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    let items = body["items"].as_array().unwrap();
    let names: Vec<&str> = items.iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(app.scheduled_task_jobs_reaching(3).await, 3);
    for item in items {
        assert_eq!(
            app.pushes_of_reaching(item["id"].as_str().unwrap(), 1)
                .await,
            1
        );
    }
}

#[tokio::test]
async fn a_batch_with_one_bad_task_names_it_and_creates_nothing() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let tasks = json!({"tasks": [
        {"name": "fine"},
        {"name": "bad", "kind": "sleep", "payload": {"ms": "soon"}},
        {"name": "fine too"},
        {"name": "x", "kind": "nope"},
    ]});
    let response = batch(&app, &user, &tasks).await;
    let problem = assert_invalid(response).await;
    assert_eq!(fields(&problem), ["tasks[1].payload.ms", "tasks[3].kind"]);
    assert_eq!(count_tasks(&app).await, 0);

    let mistyped = json!({"tasks": [{"name": "fine"}, {"name": 5}]});
    let problem = assert_invalid(batch(&app, &user, &mistyped).await).await;
    assert_eq!(fields(&problem), ["tasks[1].name"], "{problem:?}");
}

#[tokio::test]
async fn a_batch_holds_1_to_1000_tasks() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let tasks: Vec<Value> = (0..1001)
        .map(|i| json!({"name": format!("t{i}")}))
        .collect();
    let response = batch(&app, &user, &json!({"tasks": tasks})).await;
    assert_eq!(fields(&assert_invalid(response).await), ["tasks"]);
    assert_invalid(batch(&app, &user, &json!({"tasks": []})).await).await;
    assert_eq!(count_tasks(&app).await, 0);

    let response = batch(&app, &user, &json!({"tasks": tasks[..1000]})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(count_tasks(&app).await, 1000);
    assert_eq!(
        app.scheduled_task_jobs_reaching(1000).await,
        1000,
        "one push for all"
    );
}

/// `POST /api/v1/tasks/batch` as `user`.
async fn batch(app: &TestApp, user: &TestUser, body: &Value) -> reqwest::Response {
    app.post_as("/api/v1/tasks/batch", &user.token, body).await
}

/// `POST path` as `user` under an `Idempotency-Key`; still to be sent.
fn idempotent(app: &TestApp, path: &str, user: &TestUser, key: &str) -> reqwest::RequestBuilder {
    app.client
        .post(app.url(path))
        .bearer_auth(&user.token)
        .header("idempotency-key", key)
}

/// Creates a task from the JSON text `body` under the idempotency key `key`.
async fn create_with_key(
    app: &TestApp,
    user: &TestUser,
    key: &str,
    body: &str,
) -> reqwest::Response {
    let request = idempotent(app, "/api/v1/tasks", user, key);
    send_raw(request, "application/json", body.to_owned()).await
}

#[tokio::test]
async fn the_same_idempotency_key_and_body_replay_the_first_task() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let body = r#"{"name": "once"}"#;
    let first = create_with_key(&app, &user, "key-1", body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let second = create_with_key(&app, &user, "key-1", body).await;
    assert_eq!(second.status(), StatusCode::CREATED);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    let second: Value = second.json().await.unwrap();
    assert_eq!(second["id"], first["id"]);
    assert_eq!(count_tasks(&app).await, 1);
    assert_eq!(app.scheduled_task_jobs_reaching(1).await, 1, "pushed once");

    // Keys are per user: another user's same key is theirs.
    let other = app.create_user(Role::User).await;
    let theirs = create_with_key(&app, &other, "key-1", body).await;
    assert_eq!(theirs.status(), StatusCode::CREATED);
    assert!(theirs.headers().get("idempotent-replayed").is_none());
    assert_eq!(count_tasks(&app).await, 2);
}

#[tokio::test]
async fn the_same_idempotency_key_with_another_body_is_422() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let first = create_with_key(&app, &user, "key-2", r#"{"name": "one"}"#).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let second = create_with_key(&app, &user, "key-2", r#"{"name": "two"}"#).await;
    // The same key on the batch route is another request, too.
    let batch = idempotent(&app, "/api/v1/tasks/batch", &user, "key-2")
        .json(&json!({"tasks": [{"name": "one"}]}))
        .send()
        .await
        .unwrap();
    for response in [second, batch] {
        assert_refused(response, KEY_REUSED).await;
    }
    assert_eq!(count_tasks(&app).await, 1);

    let long = "k".repeat(256);
    let response = create_with_key(&app, &user, &long, r#"{"name": "x"}"#).await;
    assert_eq!(fields(&assert_invalid(response).await), ["Idempotency-Key"]);
}

#[tokio::test]
async fn the_same_json_with_its_keys_reordered_replays_and_keys_are_visible_ascii() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let first = create_with_key(
        &app,
        &user,
        "key-3",
        r#"{"name": "n", "kind": "sleep", "payload": {"ms": 1}, "max_attempts": 2}"#,
    )
    .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let reordered = create_with_key(
        &app,
        &user,
        "key-3",
        r#"{"max_attempts":2,"payload":{"ms":1},"kind":"sleep","name":"n"}"#,
    )
    .await;
    assert_eq!(
        reordered.status(),
        StatusCode::CREATED,
        "the same JSON value is the same request"
    );
    assert_eq!(reordered.headers()["idempotent-replayed"], "true");
    assert_eq!(reordered.json::<Value>().await.unwrap()["id"], first["id"]);
    assert_eq!(count_tasks(&app).await, 1);

    for key in ["with\ttab", "with space"] {
        let response = create_with_key(&app, &user, key, r#"{"name": "x"}"#).await;
        let problem = assert_invalid(response).await;
        assert_eq!(fields(&problem), ["Idempotency-Key"], "{key:?}");
    }
    assert_eq!(count_tasks(&app).await, 1);
}

#[tokio::test]
async fn a_scheduled_at_that_is_not_a_timestamp_is_named_once_in_plain_words() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let body = json!({"name": "x", "scheduled_at": "tomorrow at nine"});
    let problem = assert_invalid(app.create_task(&user.token, &body).await).await;
    assert_eq!(fields(&problem), ["scheduled_at"]);
    assert_eq!(
        problem.detail,
        "scheduled_at: must be an RFC 3339 timestamp such as 2026-01-15T09:30:00Z"
    );
}

#[tokio::test]
async fn a_batch_replays_under_its_idempotency_key() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let body = json!({"tasks": [{"name": "a"}, {"name": "b"}]});
    let send = || {
        idempotent(&app, "/api/v1/tasks/batch", &user, "batch-1")
            .json(&body)
            .send()
    };
    let first: Value = send().await.unwrap().json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["items"], first["items"]);
    assert_eq!(count_tasks(&app).await, 2);
}

#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_create_one_task() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let request =
            idempotent(&app, "/api/v1/tasks", &user, "race").json(&json!({"name": "raced"}));
        requests.spawn(async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body)
        });
    }
    let mut ids = Vec::new();
    while let Some(result) = requests.join_next().await {
        let (status, body) = result.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every answer names the one task");
    assert_eq!(count_tasks(&app).await, 1);
}

#[tokio::test]
async fn the_cap_holds_under_concurrent_creates_and_a_retry_counts_against_it() {
    const CAP: usize = 10;
    let app = spawn_capped(CAP).await;
    let user = app.create_user(Role::User).await;
    // Forty creates at once, single and batched: exactly the cap gets in.
    let creates = (0..40).map(|i| {
        let (app, token) = (&app, user.token.clone());
        async move {
            if i % 2 == 0 {
                app.create_task(&token, &json!({"name": format!("t{i}")}))
                    .await
                    .status()
            } else {
                let body = json!({"tasks": [{"name": format!("b{i}")}]});
                app.post_as("/api/v1/tasks/batch", &token, &body)
                    .await
                    .status()
            }
        }
    });
    let statuses = futures_util::future::join_all(creates).await;
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    assert_eq!(created, CAP, "{statuses:?}");
    assert_eq!(count_tasks(&app).await, CAP as i64);

    // One finishes as failed: a new task takes its place, and then the
    // failed one cannot come back past the cap by a retry.
    let failed: String = app.scalar("SELECT id::text FROM tasks LIMIT 1").await;
    set_status(&app, &failed, "failed").await;
    app.created_task(&user.token, &json!({"name": "in its place"}))
        .await;
    let retry = format!("/api/v1/tasks/{failed}/retry");
    assert_refused(app.post_as(&retry, &user.token, &json!({})).await, CAPPED).await;
    let status: String = app
        .scalar_with("SELECT status FROM tasks WHERE id = $1::uuid", &failed)
        .await;
    assert_eq!(status, "failed", "a refused retry changes nothing");
}

/// The cap's bound of unfinished tasks must rise with every way a task
/// becomes unfinished: a schedule's run and a retry both count against the
/// next create, both are refused at the cap, and a finish frees a place
/// although nothing lowers the bound but a count.
#[tokio::test]
async fn every_way_a_task_opens_counts_against_the_cap_and_a_finish_frees_a_place() {
    let app = spawn_capped(3).await;
    // Schedules are an admin's; admins are capped like everyone.
    let user = app.create_user(Role::Admin).await;
    let nightly = json!({"name": "nightly", "cron": "0 3 * * *", "kind": "noop"});
    let schedule = app
        .post_as("/api/v1/schedules", &user.token, &nightly)
        .await;
    assert_eq!(schedule.status(), StatusCode::CREATED);
    let schedule: Value = schedule.json().await.unwrap();
    let run = format!(
        "/api/v1/schedules/{}/run-now",
        schedule["id"].as_str().unwrap()
    );
    // Two tasks by the schedule, one create: full, for creates and runs.
    let empty = json!({});
    let run_now = || app.post_as(&run, &user.token, &empty);
    for _ in 0..2 {
        let response = run_now().await;
        assert!(response.status().is_success(), "{}", response.status());
    }
    let mine = app
        .created_task(&user.token, &json!({"name": "third"}))
        .await;
    let token = user.token.as_str();
    let create = |name: &str| {
        let (app, body) = (&app, json!({"name": name}));
        async move { app.create_task(token, &body).await }
    };
    assert_refused(create("fourth").await, CAPPED).await;
    assert_refused(run_now().await, CAPPED).await;
    // A failure frees a place, which a retry takes back: still full.
    let id = mine["id"].as_str().unwrap();
    set_status(&app, id, "failed").await;
    let retry = format!("/api/v1/tasks/{id}/retry");
    let retried = app.post_as(&retry, &user.token, &empty).await;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_refused(create("fourth").await, CAPPED).await;
    // Two finish: two creates fit, a third does not.
    app.execute("UPDATE tasks SET status = 'completed' WHERE schedule_id IS NOT NULL")
        .await;
    for name in ["fourth", "fifth"] {
        app.created_task(&user.token, &json!({"name": name})).await;
    }
    assert_refused(create("sixth").await, CAPPED).await;
    let unfinished: i64 = app
        .scalar("SELECT count(*) FROM tasks WHERE status IN ('pending', 'running', 'retrying')")
        .await;
    assert_eq!(unfinished, 3);
}

#[tokio::test]
async fn creates_arriving_together_commit_together_and_a_refused_one_fails_alone() {
    let app = spawn().await;
    let users = [
        app.create_user(Role::User).await,
        app.create_user(Role::User).await,
    ];
    // Thirty creates of two owners at once, one of them with text
    // PostgreSQL cannot store (a NUL in its name): it alone is refused.
    let creates = (0..30).map(|i| {
        let (app, token) = (&app, users[i % 2].token.clone());
        async move {
            let name = if i == 17 {
                "bad\u{0}name".to_owned()
            } else {
                format!("t{i}")
            };
            let response = app.create_task(&token, &json!({"name": name})).await;
            (i, response.status())
        }
    });
    for (i, status) in futures_util::future::join_all(creates).await {
        let expected = if i == 17 {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::CREATED
        };
        assert_eq!(status, expected, "create {i}");
    }
    assert_eq!(count_tasks(&app).await, 29);
    // Every one answered was committed, pushed, and written with its history.
    assert_eq!(app.scheduled_task_jobs_reaching(29).await, 29);
    let history: i64 = app.scalar("SELECT count(*) FROM task_events").await;
    assert_eq!(history, 29);
    let owners: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT owner_id, count(*) FROM tasks GROUP BY owner_id ORDER BY 2")
            .fetch_all(app.pool())
            .await
            .unwrap();
    assert_eq!(owners.iter().map(|o| o.1).collect::<Vec<_>>(), [14, 15]);
}

#[tokio::test]
async fn the_unfinished_task_cap_answers_429_and_counts_only_unfinished_tasks() {
    let app = spawn_capped(2).await;
    let user = app.create_user(Role::User).await;
    let first = app.created_task(&user.token, &json!({"name": "1"})).await;
    app.created_task(&user.token, &json!({"name": "2"})).await;
    let third = app.create_task(&user.token, &json!({"name": "3"})).await;
    assert_refused(third, CAPPED).await;
    let fourth = json!({"tasks": [{"name": "4"}]});
    assert_refused(batch(&app, &user, &fourth).await, CAPPED).await;

    // Admins are capped too; other users are not affected.
    let admin = app.create_user(Role::Admin).await;
    app.created_task(&admin.token, &json!({"name": "a1"})).await;
    app.created_task(&admin.token, &json!({"name": "a2"})).await;
    let third = app.create_task(&admin.token, &json!({"name": "a3"})).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);

    // A finished task frees its place.
    set_status(&app, first["id"].as_str().unwrap(), "completed").await;
    app.created_task(&user.token, &json!({"name": "3"})).await;
}

#[tokio::test]
async fn with_redis_down_a_task_is_still_created_and_left_for_the_reconciler() {
    let app = spawn_app_without_redis().await;
    let user = app.create_user(Role::User).await;
    let task = app
        .created_task(&user.token, &json!({"name": "offline"}))
        .await;
    // The answer follows the commit, and the refused push follows the answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if enqueued_at(&app, task["id"].as_str().unwrap())
            .await
            .is_none()
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "marked as never handed to Redis within 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_celery_aliases_create_an_echo_task_and_report_its_status() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let hello = json!({"message": "hello"});
    let response = app
        .post_as("/api/v1/celery/test-task", &user.token, &hello)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    let id = created["task_id"].as_str().expect("a task id").to_owned();
    assert_eq!(app.pushes_of_reaching(&id, 1).await, 1);

    let task = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(task["kind"], "echo");
    assert_eq!(task["payload"], hello);

    let path = format!("/api/v1/celery/task-status/{id}");
    let status = app.get_json(&path, &user.token).await;
    assert_eq!(
        status,
        json!({"task_id": id, "status": "pending", "result": null})
    );

    app.execute_with(
        "UPDATE tasks SET status = 'completed', result = '{\"message\": \"hello\"}' \
         WHERE id = $1::uuid",
        &id,
    )
    .await;
    let status = app.get_json(&path, &user.token).await;
    assert_eq!(status["status"], "completed");
    assert_eq!(status["result"], hello);

    let bad = app
        .post_as("/api/v1/celery/test-task", &user.token, &json!({}))
        .await;
    assert_invalid(bad).await;
}

#[tokio::test]
async fn openapi_documents_the_task_and_admin_routes() {
    let app = spawn().await;
    let doc = app.openapi().await;
    for (method, path, deprecated) in [
        ("get", "/api/v1/tasks", false),
        ("post", "/api/v1/tasks", false),
        ("post", "/api/v1/tasks/batch", false),
        ("get", "/api/v1/tasks/kinds", false),
        ("get", "/api/v1/tasks/{id}", false),
        ("get", "/api/v1/tasks/{id}/status", false),
        ("post", "/api/v1/tasks/{id}/cancel", false),
        ("post", "/api/v1/tasks/{id}/retry", false),
        ("post", "/api/v1/celery/test-task", true),
        ("get", "/api/v1/celery/task-status/{task_id}", true),
        ("get", "/api/v1/admin/workers", false),
        ("get", "/api/v1/admin/queues", false),
        ("get", "/api/v1/admin/stats", false),
    ] {
        let operation = &doc["paths"][path][method];
        assert!(operation.is_object(), "{method} {path} is documented");
        assert!(operation["security"].is_array(), "{method} {path} security");
        assert_eq!(
            operation["deprecated"].as_bool().unwrap_or(false),
            deprecated,
            "{method} {path} deprecated"
        );
        let responses = operation["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('4')),
            "{method} {path} documents its problems"
        );
    }
    for schema in [
        "Task",
        "TaskState",
        "TaskDetail",
        "NewTaskRequest",
        "KindInfo",
        "QueueStats",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    let tags: Vec<&str> = doc["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"tasks") && tags.contains(&"admin"),
        "{tags:?}"
    );
}

#[tokio::test]
async fn after_its_connections_are_killed_one_create_fails_with_503_and_the_rest_succeed() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    // Open several pooled connections: concurrent creates.
    let bodies: Vec<Value> = (0..20)
        .map(|i| json!({"name": format!("warm {i}")}))
        .collect();
    let warm = bodies.iter().map(|body| app.create_task(&user.token, body));
    for response in futures_util::future::join_all(warm).await {
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    let killed: i64 = app
        .scalar(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS k",
        )
        .await;
    assert!(killed >= 2, "the API held {killed} connections");

    // PostgreSQL itself is up: only the first statement on a dead
    // connection may fail (and says 503); the others are pinged first.
    let mut failed = 0;
    for i in 0..20 {
        let response = app
            .create_task(&user.token, &json!({"name": format!("after {i}")}))
            .await;
        if response.status() != StatusCode::CREATED {
            assert_refused(response, SERVICE_UNAVAILABLE).await;
            failed += 1;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(failed <= 1, "{failed} of 20 creates failed after one kill");
}

#[tokio::test]
async fn a_deadline_must_lie_ahead_of_now_and_of_the_start() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let past = (Utc::now() - Duration::seconds(5)).to_rfc3339();
    let response = app
        .create_task(&user.token, &json!({"name": "late", "expires_at": past}))
        .await;
    assert_refused_because(response, "expires_at", "must be in the future").await;

    let start = Utc::now() + Duration::hours(2);
    let before_start = (start - Duration::minutes(1)).to_rfc3339();
    let body =
        json!({"name": "odd", "scheduled_at": start.to_rfc3339(), "expires_at": before_start});
    let response = app.create_task(&user.token, &body).await;
    assert_refused_because(response, "expires_at", "must be after scheduled_at").await;

    let batch = json!({"tasks": [{"name": "ok"}, {"name": "late", "expires_at": past}]});
    let response = app
        .post_as("/api/v1/tasks/batch", &user.token, &batch)
        .await;
    assert_refused_because(response, "tasks[1].expires_at", "must be in the future").await;
    assert_eq!(count_tasks(&app).await, 0, "nothing was created");

    let later = (start + Duration::hours(1)).to_rfc3339();
    let body = json!({"name": "fine", "scheduled_at": start.to_rfc3339(), "expires_at": later});
    let created = app.created_task(&user.token, &body).await;
    assert!(created["expires_at"].is_string());
}

/// A 422 whose one field error is `message` on `field`.
async fn assert_refused_because(response: reqwest::Response, field: &str, message: &str) {
    let problem = assert_invalid(response).await;
    assert_eq!(fields(&problem), [field], "{problem:?}");
    assert_eq!(problem.errors.unwrap()[0].message, message);
}

/// Creates `body` as `user`, answering the status and the JSON.
async fn create_unique(app: &TestApp, user: &TestUser, body: &Value) -> (StatusCode, Value) {
    let response = app.create_task(&user.token, body).await;
    (response.status(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_unique_task_has_no_unfinished_twin_and_its_period_counts_finished_ones() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let fetch = |url: &str, on_conflict: &str| {
        json!({"name": "fetch", "kind": "echo", "payload": {"url": url, "n": 1},
            "unique": {"fields": ["url"], "on_conflict": on_conflict}})
    };
    let (status, first) = create_unique(&app, &user, &fetch("a", "reject")).await;
    assert_eq!(status, StatusCode::CREATED);

    let twin = app.create_task(&user.token, &fetch("a", "reject")).await;
    let problem = assert_problem(twin, StatusCode::CONFLICT, "task_not_unique").await;
    assert_eq!(
        problem.existing_task_id.map(|id| id.to_string()),
        first["id"].as_str().map(str::to_owned)
    );
    let (status, existing) = create_unique(&app, &user, &fetch("a", "existing")).await;
    assert_eq!(
        (status, &existing["id"]),
        (StatusCode::OK, &first["id"]),
        "the twin itself"
    );

    // Another value, or another owner, is another key; so are fields left out.
    let (status, _) = create_unique(&app, &user, &fetch("b", "reject")).await;
    assert_eq!(status, StatusCode::CREATED);
    let other = app.create_user(Role::User).await;
    let (status, _) = create_unique(&app, &other, &fetch("a", "reject")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(count_tasks(&app).await, 3);

    // Finished, the key is free again; unless the request counts a period.
    let id = first["id"].as_str().unwrap();
    let cancel = app
        .post_as(&format!("/api/v1/tasks/{id}/cancel"), &user.token, None)
        .await;
    assert_eq!(cancel.status(), StatusCode::OK);
    let mut within_hour = fetch("a", "reject");
    within_hour["unique"]["period_seconds"] = json!(3600);
    let response = app.create_task(&user.token, &within_hour).await;
    let problem = assert_problem(response, StatusCode::CONFLICT, "task_not_unique").await;
    assert_eq!(
        problem.existing_task_id.map(|id| id.to_string()).as_deref(),
        Some(id)
    );
    let (status, second) = create_unique(&app, &user, &fetch("a", "reject")).await;
    assert_eq!(status, StatusCode::CREATED);

    // The cancelled one retried would be a second unfinished twin.
    let retry = app
        .post_as(&format!("/api/v1/tasks/{id}/retry"), &user.token, None)
        .await;
    let problem = assert_problem(retry, StatusCode::CONFLICT, "task_not_unique").await;
    assert_eq!(
        problem.existing_task_id.map(|id| id.to_string()).as_deref(),
        second["id"].as_str(),
        "it names the twin"
    );
    let second_id = second["id"].as_str().unwrap();
    app.post_as(
        &format!("/api/v1/tasks/{second_id}/cancel"),
        &user.token,
        None,
    )
    .await;
    let retry = app
        .post_as(&format!("/api/v1/tasks/{id}/retry"), &user.token, None)
        .await;
    assert_eq!(
        retry.status(),
        StatusCode::OK,
        "free again once the twin is cancelled"
    );
}

#[tokio::test]
async fn concurrent_unique_creates_on_two_replicas_make_exactly_one_task() {
    let app = spawn().await;
    let replica = app.spawn_replica().await;
    let user = app.create_user(Role::User).await;
    let body = json!({"name": "once", "kind": "echo", "payload": {"report": "daily"},
        "unique": {"fields": ["report"]}});
    let creates = (0..30).map(|i| {
        let (target, body, token) = (if i % 2 == 0 { &app } else { &replica }, &body, &user.token);
        async move {
            let response = target.create_task(token, body).await;
            (response.status(), response.json::<Value>().await.unwrap())
        }
    });
    let answers = futures_util::future::join_all(creates).await;
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(created.len(), 1, "{answers:?}");
    for (status, body) in &answers {
        if *status != StatusCode::CREATED {
            assert_eq!(*status, StatusCode::CONFLICT, "{body}");
            assert_eq!(body["existing_task_id"], created[0]["id"]);
        }
    }
    assert_eq!(count_tasks(&app).await, 1);
}

#[tokio::test]
async fn a_bad_unique_request_names_its_field() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let cases = [
        (json!({"fields": ["missing"]}), "unique.fields[0]"),
        (
            json!({"fields": ["url"], "period_seconds": 0}),
            "unique.period_seconds",
        ),
        (
            json!({"fields": ["url"], "period_seconds": 31_536_001}),
            "unique.period_seconds",
        ),
        (
            json!({"fields": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k"]}),
            "unique.fields",
        ),
    ];
    for (unique, field) in cases {
        let body = json!({"name": "u", "kind": "echo", "payload": {"url": "x"}, "unique": unique});
        let problem = assert_invalid(app.create_task(&user.token, &body).await).await;
        assert_names(&problem, field, &unique.to_string());
    }
    let body = json!({"name": "u", "kind": "echo", "payload": {"url": "x"},
        "unique": {"on_conflict": "maybe"}});
    let problem = assert_invalid(app.create_task(&user.token, &body).await).await;
    assert_names(&problem, "unique.on_conflict", "an unknown choice");
    let batch = json!({"tasks": [{"name": "u", "unique": {}}]});
    let response = app
        .post_as("/api/v1/tasks/batch", &user.token, &batch)
        .await;
    let problem = assert_invalid(response).await;
    assert_names(&problem, "tasks[0].unique", "not in a batch");
    assert_eq!(count_tasks(&app).await, 0);
}

#[tokio::test]
async fn a_kinds_policy_says_who_may_create_it_and_narrows_what_a_create_may_ask() {
    let app = spawn_app_with(&[
        "--rate-limit-enabled",
        "false",
        "--enable-test-kinds",
        "true",
    ])
    .await;
    let user = app.create_user(Role::User).await;
    let admin = app.create_user(Role::Admin).await;
    let kinds = app.get_json("/api/v1/tasks/kinds", &user.token).await;
    let policy = |name: &str| {
        kinds
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["policy"].clone())
            .unwrap()
    };
    let abort = policy("abort");
    assert_eq!(abort["roles"], json!(["admin", "superadmin"]));
    assert_eq!(abort["max_attempts"], json!({"default": 1, "max": 3}));
    assert_eq!(abort["queue"], "tasks");
    let echo = policy("echo");
    assert_eq!(echo["roles"], json!(["user", "admin", "superadmin"]));
    assert_eq!(echo["max_attempts"], json!({"default": 3, "max": 100}));
    assert_eq!(echo["interruptible"], true);

    // A user may not create an admin-only kind, alone or in a batch.
    let poison = json!({"name": "p", "kind": "abort"});
    assert_problem(
        app.create_task(&user.token, &poison).await,
        StatusCode::FORBIDDEN,
        "kind_forbidden",
    )
    .await;
    let batch = json!({"tasks": [{"name": "fine"}, poison]});
    let response = app
        .post_as("/api/v1/tasks/batch", &user.token, &batch)
        .await;
    assert_problem(response, StatusCode::FORBIDDEN, "kind_forbidden").await;
    assert_eq!(count_tasks(&app).await, 0);

    // An admin may, within the kind's limits: its default, never more than its most.
    let created = app.created_task(&admin.token, &poison).await;
    assert_eq!(created["max_attempts"], 1, "the kind's default");
    let wider = json!({"name": "p", "kind": "abort", "max_attempts": 5});
    let problem = assert_invalid(app.create_task(&admin.token, &wider).await).await;
    assert_names(&problem, "max_attempts", "wider than the kind allows");
    let narrower = json!({"name": "p", "kind": "abort", "max_attempts": 2});
    assert_eq!(
        app.created_task(&admin.token, &narrower).await["max_attempts"],
        2
    );
}
