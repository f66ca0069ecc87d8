//! Control over work in flight, through HTTP and a real worker. Cancelling
//! a running task: the worker is told over Redis (or sees the request at
//! its lease renewal), drops the attempt, frees its slot and writes
//! `cancelled`; a kind that may not be interrupted refuses. Snoozing: a
//! handler puts its task off without spending an attempt, up to its kind's
//! cap. Expiry: a task not started by its deadline ends `expired`, unrun.

use std::time::{Duration, Instant};

use keel_shared::domain::Role;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::assert_problem,
    pipeline::{Stack, post, stack_with, wait_for},
};

/// A stack whose worker runs one attempt at a time, with the test-only kinds.
async fn one_slot_stack(extra: &[&str]) -> Stack {
    let mut flags = vec![
        "--rate-limit-enabled",
        "false",
        "--enable-test-kinds",
        "true",
        "--concurrency",
        "1",
    ];
    flags.extend_from_slice(extra);
    stack_with(&flags).await
}

#[tokio::test]
async fn a_running_sleep_cancelled_ends_cancelled_at_once_and_frees_its_worker_slot() {
    let Stack { app, worker: _w } = &one_slot_stack(&[]).await;
    let user = app.create_user(Role::User).await;
    let long = json!({"name": "long", "kind": "sleep", "payload": {"ms": 60_000}});
    let task = post(app, "/api/v1/tasks", &user, &long).await;
    let id = task["id"].as_str().unwrap();
    wait_for(app, &user, id, "running").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let asked = Instant::now();
    let response = app
        .post_as(&format!("/api/v1/tasks/{id}/cancel"), &user.token, None)
        .await;
    let took = asked.elapsed();
    // 200 only once the worker has let go; the lease renewal (every 10 s
    // here) is not what told it.
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{:?}",
        response.text().await
    );
    let cancelled: Value = response.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["error"], "cancelled while running");
    assert!(cancelled["finished_at"].is_string());
    println!("a running task was cancelled in {took:?}");

    // The one slot is free: the next task runs now, not in a minute.
    let next = json!({"name": "next", "kind": "echo", "payload": {"after": "cancel"}});
    let next = post(app, "/api/v1/tasks", &user, &next).await;
    wait_for(app, &user, next["id"].as_str().unwrap(), "completed").await;

    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    let history: Vec<&str> = detail["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to_status"].as_str().unwrap())
        .collect();
    assert_eq!(history, ["pending", "running", "cancelled"]);
    assert_eq!(detail["attempts"], 1);

    // Retried, it runs again from the start; a second cancel stops it again.
    let retried = post(app, &format!("/api/v1/tasks/{id}/retry"), &user, &json!({})).await;
    assert_eq!(retried["status"], "pending");
    wait_for(app, &user, id, "running").await;
    let again = app
        .post_as(&format!("/api/v1/tasks/{id}/cancel"), &user.token, None)
        .await;
    assert_eq!(again.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_cancel_the_worker_did_not_hear_is_seen_at_its_next_lease_renewal() {
    // A 3 s lease is renewed every second.
    let Stack { app, worker: _w } = &one_slot_stack(&["--task-lease-seconds", "3"]).await;
    let user = app.create_user(Role::User).await;
    let long = json!({"name": "long", "kind": "sleep", "payload": {"ms": 60_000}});
    let task = post(app, "/api/v1/tasks", &user, &long).await;
    let id = task["id"].as_str().unwrap();
    wait_for(app, &user, id, "running").await;

    // The request on the row alone, as if the Redis message had been lost.
    app.execute_with(
        "UPDATE tasks SET cancel_requested_at = now() WHERE id = $1::uuid",
        id,
    )
    .await;
    let ended = wait_for(app, &user, id, "cancelled").await;
    assert_eq!(ended["attempts"], 1);
}

#[tokio::test]
async fn a_kind_that_may_not_be_interrupted_refuses_a_cancel_while_it_runs() {
    let Stack { app, worker: _w } = &one_slot_stack(&[]).await;
    let user = app.create_user(Role::User).await;
    let kinds = app.get_json("/api/v1/tasks/kinds", &user.token).await;
    let interruptible = |name: &str| {
        kinds
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == name)
            .map(|k| k["policy"]["interruptible"].clone())
    };
    assert_eq!(interruptible("sleep"), Some(json!(true)));
    assert_eq!(interruptible("steady_sleep"), Some(json!(false)));

    let steady = json!({"name": "steady", "kind": "steady_sleep", "payload": {"ms": 1_500}});
    let task = post(app, "/api/v1/tasks", &user, &steady).await;
    let id = task["id"].as_str().unwrap();
    wait_for(app, &user, id, "running").await;
    let response = app
        .post_as(&format!("/api/v1/tasks/{id}/cancel"), &user.token, None)
        .await;
    let problem = assert_problem(response, StatusCode::CONFLICT, "task_not_cancellable").await;
    assert!(
        problem.detail.contains("steady_sleep"),
        "{}",
        problem.detail
    );
    let done = wait_for(app, &user, id, "completed").await;
    assert_eq!(
        done["progress"], 100,
        "the refused cancel did not touch the attempt"
    );

    // Before it starts, the same kind cancels like any other.
    let later = json!({"name": "later", "kind": "steady_sleep", "payload": {"ms": 10},
        "scheduled_at": (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339()});
    let later = post(app, "/api/v1/tasks", &user, &later).await;
    let response = app
        .post_as(
            &format!("/api/v1/tasks/{}/cancel", later["id"].as_str().unwrap()),
            &user.token,
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_snoozed_task_runs_again_later_without_spending_an_attempt() {
    let Stack { app, worker: _w } = &one_slot_stack(&[]).await;
    let user = app.create_user(Role::User).await;
    let patient = json!({"name": "patient", "kind": "snooze", "max_attempts": 1,
        "payload": {"times": 3, "ms": 50}});
    let task = post(app, "/api/v1/tasks", &user, &patient).await;
    let id = task["id"].as_str().unwrap();
    let done = wait_for(app, &user, id, "completed").await;
    assert_eq!(
        done["attempts"], 1,
        "three snoozes spent none of its one attempt"
    );
    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(detail["result"], json!({"snoozed": 3, "attempt": 1}));
    assert!(detail["error"].is_null(), "{detail}");

    // One that would snooze forever fails at its kind's cap (5).
    let endless = json!({"name": "endless", "kind": "snooze", "max_attempts": 1,
        "payload": {"times": 1000, "ms": 10}});
    let task = post(app, "/api/v1/tasks", &user, &endless).await;
    let id = task["id"].as_str().unwrap();
    wait_for(app, &user, id, "failed").await;
    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(
        detail["error"],
        "snoozed 5 times, the most kind \"snooze\" allows"
    );
    let snoozes: i32 = app
        .scalar_with("SELECT snoozes FROM tasks WHERE id = $1::uuid", id)
        .await;
    assert_eq!(snoozes, 5);

    // A retry starts the count again.
    post(app, &format!("/api/v1/tasks/{id}/retry"), &user, &json!({})).await;
    let snoozes: i32 = app
        .scalar_with("SELECT snoozes FROM tasks WHERE id = $1::uuid", id)
        .await;
    assert!(snoozes < 5, "{snoozes}");
}

#[tokio::test]
async fn a_task_whose_deadline_passes_while_it_waits_for_a_slot_ends_expired_unrun() {
    let Stack { app, worker: _w } = &one_slot_stack(&[]).await;
    let user = app.create_user(Role::User).await;
    // The one slot is busy for 2 s; the echo behind it must start within 500 ms.
    let busy = json!({"name": "busy", "kind": "sleep", "payload": {"ms": 2_000}});
    let busy = post(app, "/api/v1/tasks", &user, &busy).await;
    wait_for(app, &user, busy["id"].as_str().unwrap(), "running").await;
    // Whole milliseconds: PostgreSQL keeps microseconds.
    let deadline = chrono::SubsecRound::trunc_subsecs(
        chrono::Utc::now() + chrono::Duration::milliseconds(500),
        3,
    );
    let hurried = json!({"name": "hurried", "kind": "echo", "payload": {"x": 1},
        "expires_at": deadline.to_rfc3339()});
    let hurried = post(app, "/api/v1/tasks", &user, &hurried).await;
    assert_eq!(
        hurried["expires_at"]
            .as_str()
            .map(|s| s.parse::<chrono::DateTime<chrono::Utc>>().unwrap()),
        Some(deadline),
        "the deadline is shown as given"
    );
    let id = hurried["id"].as_str().unwrap();
    let ended = wait_for(app, &user, id, "expired").await;
    assert_eq!(ended["attempts"], 0);
    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert!(
        detail["started_at"].is_null() && detail["result"].is_null(),
        "{detail}"
    );
    assert_eq!(detail["error"], "expired before it started");

    // Listed under its status, and retried it runs (the deadline is gone).
    let listed = app
        .get_json("/api/v1/tasks?status=expired", &user.token)
        .await;
    assert_eq!(listed["total"], 1);
    let retried = post(app, &format!("/api/v1/tasks/{id}/retry"), &user, &json!({})).await;
    assert!(retried["expires_at"].is_null());
    wait_for(app, &user, id, "completed").await;
}

#[tokio::test]
async fn a_task_that_started_and_snoozed_past_its_deadline_still_runs_to_the_end() {
    let Stack { app, worker: _w } = &one_slot_stack(&[]).await;
    let user = app.create_user(Role::User).await;
    // Starts at once, then snoozes for longer than the deadline leaves.
    let deadline = chrono::Utc::now() + chrono::Duration::milliseconds(400);
    let body = json!({"name": "started", "kind": "snooze", "payload": {"times": 1, "ms": 800},
        "expires_at": deadline.to_rfc3339()});
    let task = post(app, "/api/v1/tasks", &user, &body).await;
    let id = task["id"].as_str().unwrap();
    let done = wait_for(app, &user, id, "completed").await;
    assert_eq!(done["attempts"], 1);
    let detail = app
        .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
        .await;
    assert_eq!(detail["snoozes"], 1, "{detail}");
    assert_eq!(detail["result"], json!({"snoozed": 1, "attempt": 1}));
}
