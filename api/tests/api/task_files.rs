//! Files written by tasks: `export_tasks_csv` end to end (created over
//! HTTP, run by a real worker, downloaded by its owner and by nobody else),
//! and its handler called directly against the app's database and storage
//! for paging, limits, retries and the quota.

use std::{collections::HashSet, time::Duration};

use chrono::Utc;
use keel_shared::{
    domain::Role,
    kinds::{self, TaskContext, TaskFailure, TaskServices},
    storage::Storage,
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    helpers::{TestApp, TestUser, spawn_app, spawn_app_with},
    pipeline::{Stack, stack_with},
};

const HEADER: [&str; 10] = [
    "id",
    "name",
    "kind",
    "status",
    "priority",
    "attempts",
    "created_at",
    "started_at",
    "finished_at",
    "error",
];

/// Parses `text` strictly as RFC 4180: records end with CRLF, a field with
/// a comma, quote or line break is quoted and a quote inside one doubled; a
/// quote anywhere else, a bare line feed or an unended record panics.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    // Inside quotes; and whether the field was quoted (nothing may follow its end).
    let (mut quoted, mut was_quoted) = (false, false);
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                _ => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() && !was_quoted => (quoted, was_quoted) = (true, true),
            ',' => {
                record.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            '\r' if chars.peek() == Some(&'\n') => {
                chars.next();
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
                was_quoted = false;
            }
            '"' | '\r' | '\n' => panic!("{c:?} outside quotes in {text:?}"),
            _ if was_quoted => panic!("{c:?} after a quoted field's end in {text:?}"),
            _ => field.push(c),
        }
    }
    assert!(
        !quoted && field.is_empty() && record.is_empty(),
        "the file ends with a whole record and CRLF: {text:?}"
    );
    records
}

/// Polls `GET /tasks/{id}` until the task is finished.
async fn finished(app: &TestApp, user: &TestUser, id: &str) -> Value {
    for _ in 0..400 {
        let task = app
            .get_json(&format!("/api/v1/tasks/{id}"), &user.token)
            .await;
        if ["completed", "failed", "cancelled"].contains(&task["status"].as_str().unwrap()) {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} never finished");
}

/// Downloads `url` as `user`: the status and, on success, the body parsed.
async fn download(app: &TestApp, user: &TestUser, url: &str) -> (StatusCode, Vec<Vec<String>>) {
    let response = app.get_as(url, &user.token).await;
    let status = response.status();
    if status != StatusCode::OK {
        return (status, Vec::new());
    }
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/csv");
    (status, parse_csv(&response.text().await.unwrap()))
}

fn ids(records: &[Vec<String>]) -> Vec<String> {
    records.iter().map(|r| r[0].clone()).collect()
}

#[tokio::test]
async fn an_export_holds_exactly_its_owner_s_tasks_and_only_they_can_download_it() {
    let Stack { app, worker: _w } = &stack_with(&["--rate-limit-enabled", "false"]).await;
    let alice = app.create_user(Role::User).await;
    let bob = app.create_user(Role::User).await;

    // Names and errors that need quoting, a task that never started, and some of Bob's.
    let tricky_name = "quarterly, \"final\"\nsecond line";
    let tricky_error = "boom, \"quoted\"\r\nand a CRLF";
    let mut mine = Vec::new();
    for body in [
        json!({"name": "plain", "kind": "echo", "payload": {"a": 1}}),
        json!({"name": tricky_name, "kind": "noop", "priority": -5}),
        json!({"name": "doomed", "kind": "fail", "payload": {"message": tricky_error}, "max_attempts": 1}),
        json!({"name": "later", "kind": "noop", "scheduled_at": Utc::now() + chrono::Duration::hours(1)}),
    ] {
        mine.push(
            app.created_task(&alice.token, &body).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for _ in 0..2 {
        app.created_task(&bob.token, &json!({"name": "bob's", "kind": "echo"}))
            .await;
    }
    for id in &mine[..3] {
        finished(app, &alice, id).await;
    }

    let export = app
        .created_task(
            &alice.token,
            &json!({"name": "export", "kind": "export_tasks_csv"}),
        )
        .await;
    let export_id = export["id"].as_str().unwrap();
    let done = finished(app, &alice, export_id).await;
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["rows"], 4, "{result}");
    let file_id = result["file_id"].as_str().unwrap();
    let url = format!("/api/v1/files/{file_id}/content");
    assert_eq!(result["download_url"], url);

    let (status, records) = download(app, &alice, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(records[0], HEADER);
    let rows = &records[1..];
    let mut newest_first = mine.clone();
    newest_first.reverse();
    assert_eq!(
        ids(rows),
        newest_first,
        "Alice's tasks, newest first; not Bob's, not the export"
    );
    for row in rows {
        let task = app
            .get_json(&format!("/api/v1/tasks/{}", row[0]), &alice.token)
            .await;
        let text = |key: &str| task[key].as_str().unwrap_or_default().to_owned();
        let instant = |key: &str| {
            task[key]
                .as_str()
                .map(|at| at.parse::<chrono::DateTime<Utc>>().unwrap())
        };
        assert_eq!(row[1], text("name"));
        assert_eq!(row[2], text("kind"));
        assert_eq!(row[3], text("status"));
        assert_eq!(row[4], task["priority"].to_string());
        assert_eq!(row[5], task["attempts"].to_string());
        for (column, key) in [(6, "created_at"), (7, "started_at"), (8, "finished_at")] {
            let cell = (!row[column].is_empty()).then(|| row[column].parse().unwrap());
            assert_eq!(cell, instant(key), "{key} of {}", row[0]);
        }
        assert_eq!(row[9], text("error"));
    }
    assert_eq!(
        rows[2][1], tricky_name,
        "a name with a comma, quotes and a newline"
    );
    assert_eq!(
        rows[1][9], tricky_error,
        "an error with a comma, quotes and a CRLF"
    );
    assert_eq!(rows[0][3], "pending");
    assert_eq!(
        rows[0][7], "",
        "a task that never started has no started_at"
    );

    let file = app
        .get_json(&format!("/api/v1/files/{file_id}"), &alice.token)
        .await;
    assert_eq!(file["purpose"], "task_output");
    assert_eq!(file["task_id"], export_id);
    assert_eq!(file["owner_id"], alice.user.id.to_string());
    assert_eq!(file["name"], format!("tasks-{export_id}.csv"));
    assert_eq!(file["content_type"], "text/csv");
    assert_eq!(file["size"], result["size"]);

    let (status, _) = download(app, &bob, &url).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "Bob cannot download Alice's export"
    );
    let response = app
        .get_as(&format!("/api/v1/files/{file_id}"), &bob.token)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    // A filtered export: only the failed task.
    let failed = app
        .created_task(
            &alice.token,
            &json!({"name": "failures", "kind": "export_tasks_csv", "payload": {"status": "failed"}}),
        )
        .await;
    let done = finished(app, &alice, failed["id"].as_str().unwrap()).await;
    assert_eq!(done["result"]["rows"], 1, "{done}");
    let url = done["result"]["download_url"].as_str().unwrap();
    let (_, records) = download(app, &alice, url).await;
    assert_eq!(ids(&records[1..]), [mine[2].clone()]);

    // A bad payload never becomes a task.
    let response = app
        .create_task(
            &alice.token,
            &json!({"name": "x", "kind": "export_tasks_csv", "payload": {"limit": 0}}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

/// `user`'s task `kind` as created over HTTP (never run: no worker), and a
/// context to run it in directly against `app`'s database and storage.
async fn direct(app: &TestApp, user: &TestUser, payload: Value, attempt: i32) -> (Uuid, Value) {
    let task = export(app, user, payload).await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let outcome = run(app, user, id, attempt, payload_of(&task)).await;
    (id, outcome.expect("the export succeeds"))
}

/// An `export_tasks_csv` task of `user`'s with `payload`, created over HTTP.
async fn export(app: &TestApp, user: &TestUser, payload: Value) -> Value {
    let body = json!({"name": "export", "kind": "export_tasks_csv", "payload": payload});
    app.created_task(&user.token, &body).await
}

fn payload_of(task: &Value) -> Value {
    task["payload"].clone()
}

/// Runs attempt `attempt` of export `id` in this process, as a worker would.
async fn run(
    app: &TestApp,
    user: &TestUser,
    id: Uuid,
    attempt: i32,
    payload: Value,
) -> Result<Value, TaskFailure> {
    let storage = Storage::from_config(&app.config).unwrap();
    let services = TaskServices::new(&app.config, app.pool().clone(), storage);
    let (ctx, progress) = TaskContext::new(id, attempt, user.user.id, &services);
    let outcome = kinds::find("export_tasks_csv")
        .unwrap()
        .run(payload, ctx)
        .await;
    if outcome.is_ok() {
        assert_eq!(
            *progress.borrow(),
            99,
            "progress stops short of 100 for the worker to finish"
        );
    }
    outcome
}

/// Inserts `n` pending tasks of `owner` straight into the table.
async fn insert_tasks(app: &TestApp, owner: Uuid, n: i64) {
    sqlx::query(
        "INSERT INTO tasks (id, owner_id, name, kind, timeout_seconds) \
         SELECT gen_random_uuid(), $1, 'bulk ' || i, 'noop', 60 FROM generate_series(1, $2) AS i",
    )
    .bind(owner)
    .bind(n)
    .execute(app.pool())
    .await
    .unwrap();
}

/// The files rows of task `id`.
async fn outputs_of(app: &TestApp, id: Uuid) -> i64 {
    app.scalar_with("SELECT count(*) FROM files WHERE task_id = $1", id)
        .await
}

#[tokio::test]
async fn an_export_pages_through_thousands_of_tasks_and_stops_at_its_limit() {
    let app = &spawn_app().await;
    let alice = app.create_user(Role::User).await;
    let bob = app.create_user(Role::User).await;
    insert_tasks(app, alice.user.id, 2_500).await;
    insert_tasks(app, bob.user.id, 300).await;

    let (_, all) = direct(app, &alice, json!({}), 1).await;
    assert_eq!(all["rows"], 2_500, "every page, the last one short: {all}");
    let (_, records) = download(app, &alice, all["download_url"].as_str().unwrap()).await;
    let ids = ids(&records[1..]);
    assert_eq!(ids.len(), 2_500);
    assert_eq!(
        ids.iter().collect::<HashSet<_>>().len(),
        2_500,
        "no row twice across pages"
    );
    let parsed: Vec<Uuid> = ids.iter().map(|id| id.parse().unwrap()).collect();
    assert!(
        parsed.windows(2).all(|w| w[0] > w[1]),
        "newest (greatest id) first"
    );

    let (_, limited) = direct(app, &alice, json!({"limit": 1_234}), 1).await;
    assert_eq!(limited["rows"], 1_234, "a limit that ends inside a page");
    let (_, records) = download(app, &alice, limited["download_url"].as_str().unwrap()).await;
    assert_eq!(records.len(), 1 + 1_234);
    assert_eq!(records[1][0], parsed[0].to_string(), "the newest first");

    let (_, none) = direct(app, &alice, json!({"status": "completed"}), 1).await;
    assert_eq!(none["rows"], 0);
    let (_, records) = download(app, &alice, none["download_url"].as_str().unwrap()).await;
    assert_eq!(records, [HEADER], "an empty export is its header");
}

#[tokio::test]
async fn a_retried_export_returns_the_file_its_earlier_attempt_recorded() {
    let app = &spawn_app().await;
    let alice = app.create_user(Role::User).await;
    insert_tasks(app, alice.user.id, 3).await;
    let tricky = "a \"quoted\",\nname";
    app.created_task(&alice.token, &json!({"name": tricky, "kind": "noop"}))
        .await;

    let (id, first) = direct(app, &alice, json!({}), 1).await;
    assert_eq!(first["rows"], 4);
    // More tasks since: a fresh export would differ, so the same answer
    // proves the recorded file was returned, not rewritten.
    insert_tasks(app, alice.user.id, 5).await;
    let again = run(app, &alice, id, 2, json!({})).await.unwrap();
    assert_eq!(again, first, "the same file, its rows counted from it");
    assert_eq!(outputs_of(app, id).await, 1, "one file for the task");
}

#[tokio::test]
async fn an_export_past_the_storage_quota_fails_for_good_and_leaves_nothing() {
    let app = &spawn_app_with(&["--user-storage-quota-bytes", "2000"]).await;
    let alice = app.create_user(Role::User).await;
    insert_tasks(app, alice.user.id, 100).await;

    let task = app
        .created_task(
            &alice.token,
            &json!({"name": "export", "kind": "export_tasks_csv"}),
        )
        .await;
    let id: Uuid = task["id"].as_str().unwrap().parse().unwrap();
    let failure = run(app, &alice, id, 1, json!({})).await.unwrap_err();
    assert!(!failure.retryable, "{failure:?}");
    assert!(failure.message.contains("storage quota"), "{failure:?}");
    assert_eq!(outputs_of(app, id).await, 0);
    let leftovers: Vec<_> = walk(&app.config.storage.files_dir);
    assert!(leftovers.is_empty(), "no object left behind: {leftovers:?}");

    // Small enough, it fits.
    let (_, small) = direct(app, &alice, json!({"limit": 5}), 1).await;
    assert_eq!(small["rows"], 5);
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}
