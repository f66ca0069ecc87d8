//! `/api/v1/admin/{workers,queues,stats}`: admins only, with counts that
//! follow the tasks created.

use chrono::{Duration, Utc};
use keel_shared::{domain::Role, queue::Queue, workers};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    helpers::{TestApp, assert_invalid, spawn_app_with, spawn_app_without_redis},
    refusals::{FORBIDDEN, NOT_AUTHENTICATED, NOT_FOUND, assert_refused},
};

async fn spawn() -> TestApp {
    spawn_app_with(&["--rate-limit-enabled", "false"]).await
}

const ROUTES: [&str; 3] = [
    "/api/v1/admin/workers",
    "/api/v1/admin/queues",
    "/api/v1/admin/stats",
];

fn queue<'a>(queues: &'a Value, name: &str) -> &'a Value {
    queues
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == name)
        .unwrap_or_else(|| panic!("queue {name} in {queues}"))
}

#[tokio::test]
async fn admin_routes_are_403_for_users_and_401_for_nobody() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    for path in ROUTES {
        let by_user = app.get_as(path, &user.token).await;
        assert_eq!(by_user.status(), StatusCode::FORBIDDEN, "{path} for a user");
        assert_refused(by_user, FORBIDDEN).await;
        let anonymous = app.get(path).await;
        assert_eq!(
            anonymous.status(),
            StatusCode::UNAUTHORIZED,
            "{path} for nobody"
        );
        assert_refused(anonymous, NOT_AUTHENTICATED).await;
    }
    let superadmin = app.create_user(Role::Superadmin).await;
    for path in ROUTES {
        assert_eq!(
            app.get_as(path, &superadmin.token).await.status(),
            StatusCode::OK,
            "{path} for a superadmin"
        );
    }
}

#[tokio::test]
async fn workers_lists_the_live_worker_cards() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let none = app.get_json("/api/v1/admin/workers", &admin.token).await;
    assert_eq!(none, json!([]));

    // Built from JSON so the card may grow fields without this test changing.
    let mut card: workers::WorkerCard = serde_json::from_value(json!({
        "id": "worker-test-1", "hostname": "host", "pid": 42, "queues": ["tasks"],
        "concurrency": 8, "in_flight": 0, "processed": 0, "failed": 0,
        "version": "0.1.0", "started_at": Utc::now(), "last_seen": Utc::now(),
    }))
    .unwrap();
    workers::heartbeat(&app.redis(), &mut card).await.unwrap();

    let live = app.get_json("/api/v1/admin/workers", &admin.token).await;
    let live = live.as_array().unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0]["id"], "worker-test-1");
    assert_eq!(live[0]["hostname"], "host");
    assert_eq!(live[0]["queues"], json!(["tasks"]));
    assert_eq!(live[0]["concurrency"], 8);
    assert!(live[0]["last_seen"].is_string());
}

#[tokio::test]
async fn queues_count_tasks_in_postgres_and_jobs_in_redis() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let user = app.create_user(Role::User).await;
    for name in ["a", "b", "c"] {
        app.created_task(&user.token, &json!({"name": name})).await;
    }
    app.created_task(
        &user.token,
        &json!({"name": "later", "scheduled_at": Utc::now() + Duration::hours(2)}),
    )
    .await;
    let done = app
        .created_task(&user.token, &json!({"name": "done"}))
        .await;
    let failed = app
        .created_task(&user.token, &json!({"name": "failed"}))
        .await;
    let running = app
        .created_task(&user.token, &json!({"name": "running"}))
        .await;
    for (task, status) in [
        (&done, "completed"),
        (&failed, "failed"),
        (&running, "running"),
    ] {
        sqlx::query("UPDATE tasks SET status = $2 WHERE id = $1::uuid")
            .bind(task["id"].as_str().unwrap())
            .bind(status)
            .execute(app.pool())
            .await
            .unwrap();
    }

    let response = app.get_as("/api/v1/admin/queues", &admin.token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let queues: Value = response.json().await.unwrap();
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["email", "tasks", "maintenance"]);

    let tasks = queue(&queues, "tasks");
    assert_eq!(tasks["pending"], 3, "{tasks}");
    assert_eq!(tasks["scheduled"], 1, "the task due in two hours: {tasks}");
    assert_eq!(tasks["running"], 1);
    assert_eq!(tasks["done"], 1);
    assert_eq!(tasks["failed"], 1);
    assert_eq!(
        tasks["redis"],
        json!({"scheduled": 7, "active": 0, "in_flight": 0, "done": 0, "dead": 0}),
        "every push waits in the scheduled set until a worker fetches it"
    );
    let email = queue(&queues, "email");
    assert_eq!(email["pending"], 0);
    assert_eq!(email["redis"]["scheduled"], 0);
}

#[tokio::test]
async fn queues_answer_from_postgres_alone_when_redis_is_down() {
    let app = spawn_app_without_redis().await;
    let admin = app.create_user(Role::Admin).await;
    app.created_task(&admin.token, &json!({"name": "offline"}))
        .await;
    let response = app.get_as("/api/v1/admin/queues", &admin.token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let queues: Value = response.json().await.unwrap();
    let tasks = queue(&queues, "tasks");
    assert_eq!(tasks["pending"], 1);
    assert!(tasks["redis"].is_null(), "{tasks}");
}

#[tokio::test]
async fn stats_count_users_and_tasks() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let user = app.create_user(Role::User).await;
    app.created_task(&user.token, &json!({"name": "one"})).await;
    let cancelled = app.created_task(&user.token, &json!({"name": "two"})).await;
    let path = format!("/api/v1/tasks/{}/cancel", cancelled["id"].as_str().unwrap());
    let cancel = app.post_as(&path, &user.token, None).await;
    assert_eq!(cancel.status(), StatusCode::OK);

    let stats = app.get_json("/api/v1/admin/stats", &admin.token).await;
    assert_eq!(stats["users"]["total"], 2, "{stats}");
    assert_eq!(stats["users"]["active"], 2);
    assert_eq!(stats["users"]["verified"], 2);
    assert_eq!(stats["users"]["by_role"]["admin"], 1);
    assert_eq!(stats["users"]["by_role"]["user"], 1);
    assert_eq!(stats["users"]["by_role"]["superadmin"], 0);
    assert_eq!(stats["tasks"]["total"], 2);
    assert_eq!(stats["tasks"]["by_status"]["pending"], 1);
    assert_eq!(stats["tasks"]["by_status"]["cancelled"], 1);
    assert_eq!(
        stats["tasks"]["by_status"]["failed"], 0,
        "every status is listed"
    );
}

#[tokio::test]
async fn queues_can_be_paused_and_resumed_by_admins() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let admin = app.create_user(Role::Admin).await;
    let pause = "/api/v1/admin/queues/tasks/pause";
    let by_user = app.post_as(pause, &user.token, None).await;
    assert_refused(by_user, FORBIDDEN).await;
    let bogus = app
        .post_as("/api/v1/admin/queues/bogus/pause", &admin.token, None)
        .await;
    assert_refused(bogus, NOT_FOUND).await;

    let paused = app.post_as(pause, &admin.token, None).await;
    assert_eq!(paused.status(), StatusCode::OK);
    assert_eq!(
        paused.json::<Value>().await.unwrap(),
        json!({"name": "tasks", "paused": true})
    );
    let queues = app.get_json("/api/v1/admin/queues", &admin.token).await;
    assert_eq!(queue(&queues, "tasks")["paused"], true);
    assert_eq!(queue(&queues, "email")["paused"], false);

    let resumed = app
        .post_as("/api/v1/admin/queues/tasks/resume/", &admin.token, None)
        .await;
    assert_eq!(resumed.status(), StatusCode::OK);
    let queues = app.get_json("/api/v1/admin/queues", &admin.token).await;
    assert_eq!(queue(&queues, "tasks")["paused"], false);
}

#[tokio::test]
async fn purge_deletes_old_finished_tasks_of_one_status_with_their_history() {
    let app = spawn().await;
    let user = app.create_user(Role::User).await;
    let admin = app.create_user(Role::Admin).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let task = app.created_task(&user.token, &json!({"name": "t"})).await;
        ids.push(uuid::Uuid::parse_str(task["id"].as_str().unwrap()).unwrap());
    }
    // Two completed long ago, one completed just now, one failed long ago.
    let finish = |id: uuid::Uuid, status: &'static str, age: &'static str| {
        let pool = app.pool().clone();
        async move {
            sqlx::query(
                "UPDATE tasks SET status = $2, started_at = now() - $3::interval, \
                 finished_at = now() - $3::interval WHERE id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(age)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    finish(ids[0], "completed", "2 days").await;
    finish(ids[1], "completed", "3 days").await;
    finish(ids[2], "completed", "1 minute").await;
    finish(ids[3], "failed", "3 days").await;

    let purge = |token: String, status: &str, older_than: &str| {
        let (app, body) = (&app, json!({"status": status, "older_than": older_than}));
        async move {
            app.post_as("/api/v1/admin/tasks/purge", &token, &body)
                .await
        }
    };
    let by_user = purge(user.token.clone(), "completed", "1d").await;
    assert_refused(by_user, FORBIDDEN).await;
    assert_invalid(purge(admin.token.clone(), "running", "soon").await).await;
    // The oldest cutoff an age can name is one PostgreSQL stores (once a 500).
    let ancient = purge(admin.token.clone(), "completed", "999999d").await;
    assert_eq!(ancient.status(), StatusCode::OK);
    assert_eq!(
        ancient.json::<Value>().await.unwrap(),
        json!({"deleted": 0})
    );

    let response = purge(admin.token.clone(), "completed", "1d").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"deleted": 2})
    );
    let left: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM tasks ORDER BY id")
        .fetch_all(app.pool())
        .await
        .unwrap();
    assert_eq!(left, [ids[2], ids[3]]);
    let orphans: i64 = app
        .scalar("SELECT count(*) FROM task_events WHERE task_id NOT IN (SELECT id FROM tasks)")
        .await;
    assert_eq!(orphans, 0, "their history went with them");
}

/// `POST /admin/tasks/bulk` as `token`.
async fn bulk(app: &TestApp, token: &str, body: &Value) -> reqwest::Response {
    app.post_as("/api/v1/admin/tasks/bulk", token, body).await
}

/// The statuses of `ids`, in order.
async fn statuses(app: &TestApp, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            app.scalar_with("SELECT status FROM tasks WHERE id = $1::uuid", id.as_str())
                .await,
        );
    }
    out
}

#[tokio::test]
async fn bulk_cancel_and_retry_take_what_the_filter_matches_in_batches() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let (a, b) = (
        app.create_user(Role::User).await,
        app.create_user(Role::User).await,
    );
    let mut theirs = Vec::new();
    for i in 0..5 {
        let kind = if i < 4 { "noop" } else { "echo" };
        let task = app
            .created_task(&a.token, &json!({"name": format!("a{i}"), "kind": kind}))
            .await;
        theirs.push(task["id"].as_str().unwrap().to_owned());
    }
    let others = app.created_task(&b.token, &json!({"name": "b"})).await;
    // One of A's noops runs on a worker (a live lease): it is asked to stop.
    app.execute_with(
        "UPDATE tasks SET status = 'running', attempts = 1, started_at = now(), \
         lease_owner = 'w/1', lease_expires_at = now() + interval '1 minute' WHERE id = $1::uuid",
        theirs[0].as_str(),
    )
    .await;

    // A running task of a kind that may not be interrupted is not asked to stop.
    let steady = app
        .created_task(&a.token, &json!({"name": "steady", "kind": "echo"}))
        .await;
    app.execute_with(
        "UPDATE tasks SET kind = 'steady_sleep', status = 'running', attempts = 1, \
         started_at = now(), lease_owner = 'w/2', lease_expires_at = now() + interval '1 minute' \
         WHERE id = $1::uuid",
        steady["id"].as_str().unwrap(),
    )
    .await;
    let steady_cancel = json!({"action": "cancel", "filter": {"kind": "steady_sleep"}});
    let response = bulk(&app, &admin.token, &steady_cancel).await;
    let done: Value = response.json().await.unwrap();
    assert_eq!(done, json!({"matched": 1, "changed": 0}));

    let filter = json!({"user_id": a.user.id, "kind": "noop", "queue": "tasks"});
    let response = bulk(
        &app,
        &admin.token,
        &json!({"action": "cancel", "filter": filter}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let done: Value = response.json().await.unwrap();
    assert_eq!(done, json!({"matched": 4, "changed": 4}));
    assert_eq!(
        statuses(&app, &theirs).await,
        ["running", "cancelled", "cancelled", "cancelled", "pending"],
        "the echo and B's task are not in the filter"
    );
    let asked: bool = app
        .scalar_with(
            "SELECT cancel_requested_at IS NOT NULL FROM tasks WHERE id = $1::uuid",
            theirs[0].as_str(),
        )
        .await;
    assert!(asked, "the running one is asked to stop");
    let again = bulk(
        &app,
        &admin.token,
        &json!({"action": "cancel", "filter": filter}),
    )
    .await;
    let again: Value = again.json().await.unwrap();
    assert_eq!(
        again,
        json!({"matched": 4, "changed": 0}),
        "nothing left to change"
    );

    let retry = json!({"action": "retry", "filter": {"status": "cancelled", "user_id": a.user.id}});
    let response = bulk(&app, &admin.token, &retry).await;
    let done: Value = response.json().await.unwrap();
    assert_eq!(done, json!({"matched": 3, "changed": 3}));
    assert_eq!(
        statuses(&app, &theirs[1..4]).await,
        ["pending", "pending", "pending"]
    );
    let queued: i64 = app
        .scalar("SELECT count(*) FROM tasks WHERE status = 'pending' AND enqueued_at IS NOT NULL")
        .await;
    assert_eq!(queued, 5, "retried tasks are queued again");
    let b_status: String = app
        .scalar_with(
            "SELECT status FROM tasks WHERE id = $1::uuid",
            others["id"].as_str().unwrap(),
        )
        .await;
    assert_eq!(b_status, "pending");

    // Users may not; bad filters name their field.
    let by_user = bulk(&app, &a.token, &retry).await;
    assert_refused(by_user, FORBIDDEN).await;
    for (body, field) in [
        (
            json!({"action": "retry", "filter": {"queue": "bulk"}}),
            "filter.queue",
        ),
        (
            json!({"action": "retry", "filter": {"status": "done"}}),
            "filter.status",
        ),
        (json!({"action": "explode"}), "action"),
        (
            json!({"action": "retry", "filter": {"kind": "k".repeat(101)}}),
            "filter.kind",
        ),
    ] {
        let problem = assert_invalid(bulk(&app, &admin.token, &body).await).await;
        crate::helpers::assert_names(&problem, field, &body.to_string());
    }
}

#[tokio::test]
async fn queues_show_waiting_tasks_of_kinds_no_live_worker_runs() {
    let app = spawn().await;
    let admin = app.create_user(Role::Admin).await;
    let user = app.create_user(Role::User).await;
    for (name, kind) in [
        ("e", "echo"),
        ("n", "noop"),
        ("s1", "sleep"),
        ("s2", "sleep"),
    ] {
        let body = json!({"name": name, "kind": kind, "payload": if kind == "sleep" { json!({"ms": 1}) } else { json!({}) }});
        app.created_task(&user.token, &body).await;
    }
    let tasks_queue = |queues: Value| queue(&queues, "tasks").clone();

    // No worker at all: nothing waiting can run.
    let queues = app.get_json("/api/v1/admin/queues", &admin.token).await;
    assert_eq!(
        tasks_queue(queues)["unrunnable"],
        json!({"echo": 1, "noop": 1, "sleep": 2})
    );
    // One that runs echo and noop (a build without sleep).
    app.announce_worker_of("w-new", Queue::Tasks, &["echo", "noop"])
        .await;
    let queues = app.get_json("/api/v1/admin/queues", &admin.token).await;
    assert_eq!(tasks_queue(queues)["unrunnable"], json!({"sleep": 2}));
    // Beside it, an older worker that does not say: nothing can be told.
    app.announce_worker("w-old", Queue::Tasks).await;
    let queues = app.get_json("/api/v1/admin/queues", &admin.token).await;
    assert!(tasks_queue(queues)["unrunnable"].is_null());
}
